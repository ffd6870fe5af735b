"""The mock chain's servers in one event loop: CometBFT RPC (uvicorn), gRPC, and the block timer.

Used by `python -m mock_chain` and, in-process, by tests (`async with MockChainServer(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType

import grpc
import uvicorn

from mock_chain.grpc_server import create_grpc_server
from mock_chain.node import ChainNode
from mock_chain.rpc import create_rpc_app
from mock_chain.settings import MockChainSettings
from shared.logging import get_logger

__all__ = ["MockChainServer"]

log = get_logger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handling: the owner of the process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MockChainServer:
    def __init__(self, settings: MockChainSettings) -> None:
        self.settings = settings
        self.node = ChainNode(settings)
        self.rpc_port = 0
        self.grpc_port = 0
        self._sock: socket.socket | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.settings.host}:{self.rpc_port}"

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.settings.host}:{self.rpc_port}/websocket"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    async def start(self) -> MockChainServer:
        settings = self.settings
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it every small response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.rpc_port))
        self._sock = sock
        self.rpc_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_rpc_app(self.node),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            ws_ping_interval=None,
        )
        server = _Uvicorn(config)
        self._uvicorn = server
        self._uvicorn_task = asyncio.create_task(server.serve(sockets=[sock]))

        grpc_server, self.grpc_port = create_grpc_server(self.node, f"{settings.host}:{settings.grpc_port}")
        await grpc_server.start()
        self._grpc = grpc_server

        while not server.started:
            if self._uvicorn_task.done():
                self._uvicorn_task.result()
                raise RuntimeError("the RPC server stopped while starting")
            await asyncio.sleep(0.01)
        self._timer_task = asyncio.create_task(self.node.run_timer())
        log.info(
            "mock chain serving",
            extra={
                "rpc_url": self.rpc_url,
                "grpc": self.grpc_target,
                "block_time_s": settings.block_time_s,
                "voting_period_blocks": settings.voting_period_blocks,
                "chain_id": settings.chain_id,
                "version": self.node.chain.mlnode_version,
            },
        )
        return self

    async def stop(self) -> None:
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        self.node.close_websockets()
        if self._uvicorn is not None and self._uvicorn_task is not None:
            self._uvicorn.should_exit = True
            await self._uvicorn_task
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
        if self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> MockChainServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
