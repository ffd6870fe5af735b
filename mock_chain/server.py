"""The mock chain's servers in one event loop: CometBFT RPC (HTTP), gRPC, and the block timer.

Used by `python -m mock_chain` and, in-process, by tests (`async with MockChainServer(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import grpc

from mock_chain.grpc_server import create_grpc_server
from mock_chain.node import ChainNode
from mock_chain.rpc import create_rpc_app
from mock_chain.settings import MockChainSettings
from shared.http_serving import HttpServer
from shared.logging import get_logger

__all__ = ["MockChainServer"]

log = get_logger(__name__)


class MockChainServer:
    def __init__(self, settings: MockChainSettings) -> None:
        self.settings = settings
        self.node = ChainNode(settings)
        self.rpc_port = 0
        self.grpc_port = 0
        self._http: HttpServer | None = None
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
        # As before the shared server existed: no uvicorn keep-alive pings on the websocket, and
        # at most 2 s for in-flight answers on stop.
        http = HttpServer(
            create_rpc_app(self.node), settings.host, settings.rpc_port, grace_s=2.0, ws_ping_interval=None
        )
        await http.start()
        self._http = http
        self.rpc_port = http.port

        grpc_server, self.grpc_port = create_grpc_server(self.node, f"{settings.host}:{settings.grpc_port}")
        await grpc_server.start()
        self._grpc = grpc_server

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
        if self._http is not None:
            await self._http.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)

    async def __aenter__(self) -> MockChainServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
