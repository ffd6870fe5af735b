"""The chain-watcher's composition root: settings in, a `Watcher` wired to the world out.

`build_watcher` builds the adapters (the ops HTTP server, CometBFT RPC and websocket, Cosmos
gRPC, the NATS bus and the cursor's KV document), loads the cursor and hands them to the
`Watcher` (`watcher.py`), ready to run. The ops endpoints start first: `/healthz` answers while
NATS is still being reached, and `/readyz` says what is missing. `ChainWatcher` is the whole
thing as one task, for `__main__` and the tests that run the watcher in-process.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from services.chain_watcher.chain_client import ChainQueries, CometRpc, NewBlockSubscription
from services.chain_watcher.core import WatcherState, lag_blocks
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.ports import BlockFrames, FrameSource
from services.chain_watcher.settings import ChainWatcherSettings
from services.chain_watcher.watcher import STATE_KEY, Cursor, HeightNotServed, Watcher
from shared.bus import Bus
from shared.http_serving import HttpServer
from shared.kv_document import KvDocument
from shared.kv_store import VersionedStore
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.ops_app import ReadinessCheck, add_ops_routes

__all__ = [
    "SERVICE",
    "STATE_KEY",
    "ChainWatcher",
    "HeightNotServed",
    "WatcherApp",
    "WatcherMetrics",
    "WatcherStateCodec",
    "build_watcher",
]

SERVICE = "chain-watcher"
OPS_GRACE_S = 1.0  # in-flight ops answers get this long at shutdown

log = get_logger(__name__)


class WatcherStateCodec:
    """The cursor's own JSON (it carries its format version) as a `KvDocument` codec."""

    def encode(self, value: WatcherState) -> bytes:
        return value.to_json()

    def decode(self, data: bytes) -> WatcherState:
        return WatcherState.from_json(data)


class _OpsView:
    """What the ops endpoints read. They serve before NATS is reached, so until the watcher is
    built they report a watcher with no cursor (not ready)."""

    def __init__(self) -> None:
        self.watcher: Watcher | None = None

    def describe(self) -> dict[str, Any]:
        if self.watcher is not None:
            return self.watcher.describe()
        return {
            "cursor": None,
            "chain_height": None,
            "served_height": None,
            "claimed_height": None,
            "lag": lag_blocks(None, None),
            "chain_reachable": False,
            "catching_up": False,
            "websocket_connected": False,
            "chain_version": None,
            "known_plans": 0,
        }

    async def nats_ready(self) -> bool:
        return self.watcher is not None and await self.watcher.nats_ready()

    def chain_reachable(self) -> bool:
        return self.watcher is not None and self.watcher.view.reachable

    def chain_synced(self) -> bool:
        return self.watcher is None or not self.watcher.view.catching_up

    def lag_ok(self) -> bool:
        return self.watcher is not None and self.watcher.lag_ok()


def _ops_app(view: _OpsView, metrics: ServiceMetrics) -> FastAPI:
    app = FastAPI(
        title="chain-watcher", docs_url=None, redoc_url=None, openapi_url=None, strict_content_type=False
    )
    add_ops_routes(
        app,
        metrics,
        [
            ReadinessCheck("nats", view.nats_ready),
            ReadinessCheck("chain_reachable", view.chain_reachable),
            ReadinessCheck("chain_synced", view.chain_synced),
            ReadinessCheck("lag_blocks", view.lag_ok),
        ],
        SERVICE,
    )

    @app.get("/state", include_in_schema=False)
    async def state() -> dict[str, Any]:
        return view.describe()

    return app


def _frame_source(settings: ChainWatcherSettings) -> FrameSource:
    def subscribe(
        on_malformed: Callable[[str, str], None], on_ignored: Callable[[str], None]
    ) -> AbstractAsyncContextManager[BlockFrames]:
        return NewBlockSubscription.open(
            settings.resolved_websocket_url,
            open_timeout_s=settings.request_timeout_s,
            max_message_bytes=settings.websocket_max_message_bytes,
            on_malformed=on_malformed,
            on_ignored=on_ignored,
        )

    return subscribe


@dataclass(frozen=True)
class WatcherApp:
    """A built watcher with what it was built with: its ops server and metrics."""

    watcher: Watcher
    http: HttpServer
    metrics: ServiceMetrics


async def _close_quietly(close: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        await close()


@asynccontextmanager
async def build_watcher(
    settings: ChainWatcherSettings,
    *,
    metrics: ServiceMetrics | None = None,
    rand: Callable[[], float] = random.random,
) -> AsyncIterator[WatcherApp]:
    """The watcher wired to the chain, NATS and its cursor; everything is closed on exit."""
    metrics = metrics if metrics is not None else ServiceMetrics(SERVICE)
    series = WatcherMetrics(metrics)
    ops = _OpsView()
    async with AsyncExitStack() as stack:
        http = HttpServer(_ops_app(ops, metrics), settings.http_host, settings.http_port, grace_s=OPS_GRACE_S)
        await http.start()
        stack.push_async_callback(_close_quietly, http.stop)
        log.info("ops endpoints serving", extra={"port": http.port, "host": settings.http_host})
        rpc = CometRpc(settings.rpc_url, settings.request_timeout_s)
        queries = ChainQueries(settings.grpc_address, settings.request_timeout_s, settings.page_size)
        stack.push_async_callback(_close_quietly, queries.aclose)
        stack.push_async_callback(_close_quietly, rpc.aclose)
        bus = await Bus.connect(settings.nats, SERVICE, metrics, give_up_after_s=None)
        stack.push_async_callback(_close_quietly, bus.close)
        kv = await bus.bind_bucket(settings.bucket)  # provisioned: `mlnode-upgrade nats provision`
        document = KvDocument(
            VersionedStore(kv), STATE_KEY, WatcherStateCodec(), WatcherState(), max_attempts=1
        )
        cursor = Cursor(document, series, f"{settings.bucket}/{STATE_KEY}")
        await cursor.load()
        watcher = Watcher(
            settings,
            rpc=rpc,
            chain_state=queries,
            subscribe=_frame_source(settings),
            sink=bus,
            cursor=cursor,
            series=series,
            rand=rand,
        )
        ops.watcher = watcher
        yield WatcherApp(watcher, http, metrics)


class ChainWatcher:
    """The whole watcher as one task: `run()` builds it and runs it until cancelled."""

    def __init__(self, settings: ChainWatcherSettings, *, rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rand = rand
        self.metrics = ServiceMetrics(SERVICE)
        self._app: WatcherApp | None = None

    async def run(self) -> None:
        """Only a corrupt cursor or a bug ends it early (with an exception)."""
        async with build_watcher(self.settings, metrics=self.metrics, rand=self.rand) as app:
            self._app = app
            await app.watcher.run()

    @property
    def state(self) -> WatcherState:
        return self._app.watcher.state if self._app is not None else WatcherState()

    @property
    def websocket_connected(self) -> bool:
        return self._app is not None and self._app.watcher.view.websocket_connected

    @property
    def ops_port(self) -> int | None:
        return self._app.http.port if self._app is not None else None
