"""One way to serve an ASGI app with uvicorn inside a running event loop.

Every service, the mocks and the test fixtures serve HTTP this way: the socket is bound before
`start` returns (so a port 0 is known at once and a taken port fails loudly), TCP_NODELAY is on,
uvicorn's own signal handling is off (the process's entry point owns SIGTERM/SIGINT), and `stop`
waits for in-flight answers up to the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

__all__ = ["HttpServer"]

STARTUP_TIMEOUT_S = 10.0


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handling: the owner of the process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """`app` on `host:port` (0 picks a free port) until `stop`; `options` go to `uvicorn.Config`."""

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, grace_s: float = 2.0, **options: Any
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.options = options
        self.port = 0
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The serving task: done when the server stopped (or failed)."""
        return self._task

    async def start(self) -> HttpServer:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it every small answer waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(self.grace_s)),
            **self.options,
        )
        server = _QuietUvicorn(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"the HTTP server on {self.host}:{self.port} stopped while starting")
            if loop.time() > deadline:
                raise TimeoutError(f"the HTTP server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> HttpServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
