"""In-memory stand-ins for the chain-watcher's ports: a chain node, JetStream, the KV cursor.

They write what happens into one shared `journal`, so a test can assert the order of publishes
and cursor writes across ports.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from services.chain_watcher.chain_client import ChainError, RpcError
from services.chain_watcher.core import ObservedBlock, ObservedPlan, WatcherState
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.ports import BlockFrames
from services.chain_watcher.settings import ChainWatcherSettings
from services.chain_watcher.watcher import Cursor, Watcher
from shared.bus import Published
from shared.chain_status import ChainStatus
from shared.kv_store import StaleRevisionError
from shared.metrics import ServiceMetrics

Journal = list[tuple[str, object]]


def block_hash(height: int) -> str:
    return hashlib.sha256(str(height).encode()).hexdigest().upper()


@dataclass
class FakeChain:
    """A query node serving heights up to `served`, with one MLNode version and its plans."""

    served: int
    version: str = "v3.0.6"
    plans: list[ObservedPlan] = field(default_factory=list)

    async def status(self) -> ChainStatus:
        return ChainStatus(height=self.served, catching_up=False, latest_hash=block_hash(self.served))

    async def block(self, height: int) -> ObservedBlock:
        if height > self.served:
            raise RpcError(
                f"GET http://node:26657/block: Internal error: height {height} must be less than "
                f"or equal to the current blockchain height {self.served}"
            )
        return ObservedBlock(height, block_hash(height))

    async def partial_upgrades(self, height: int | None) -> list[ObservedPlan]:
        return list(self.plans)

    async def mlnode_version(self, height: int | None) -> str:
        return self.version


@dataclass
class FakeSink:
    """JetStream that acks everything, dropping a repeated `Nats-Msg-Id` as a duplicate."""

    journal: Journal
    seen: set[str] = field(default_factory=set)
    ready: bool = True

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None, *, retry_for_s: float = 0.0
    ) -> Published:
        duplicate = msg_id is not None and msg_id in self.seen
        if msg_id is not None:
            self.seen.add(msg_id)
        self.journal.append(("publish", msg_id))
        return Published(
            subject=subject, msg_id=msg_id, stream="CHAIN", seq=len(self.journal), duplicate=duplicate
        )

    async def jetstream_ready(self, timeout_s: float = 1.0) -> bool:
        return self.ready


@dataclass
class FakeCursorDocument:
    """The cursor's KV key; `other_writer` is written by someone else just before our next write."""

    journal: Journal
    value: WatcherState = field(default_factory=WatcherState)
    revision: int | None = None
    other_writer: WatcherState | None = None

    async def load(self) -> WatcherState:
        return self.value

    async def mutate(self, fn: Callable[[WatcherState], WatcherState]) -> WatcherState:
        if self.other_writer is not None:  # as KvDocument(max_attempts=1): re-read, then raise
            self.value, self.other_writer = self.other_writer, None
            self.revision = (self.revision or 0) + 1
            raise StaleRevisionError("cursor", self.revision - 1)
        new = fn(self.value)
        if new != self.value:
            self.value = new
            self.revision = (self.revision or 0) + 1
            self.journal.append(("save", new.last_height))
        return new


def no_websocket(
    on_malformed: Callable[[str, str], None], on_ignored: Callable[[str], None]
) -> AbstractAsyncContextManager[BlockFrames]:
    """A node whose websocket refuses every connection."""

    @asynccontextmanager
    async def refused() -> AsyncIterator[BlockFrames]:
        raise ChainError("websocket refused")
        yield  # pragma: no cover

    return refused()


@dataclass
class WatcherRig:
    watcher: Watcher
    chain: FakeChain
    sink: FakeSink
    document: FakeCursorDocument
    metrics: ServiceMetrics
    journal: Journal


async def watcher_rig(served: int, cursor: WatcherState | None = None, **settings: object) -> WatcherRig:
    """A `Watcher` over fakes with its cursor loaded, as the composition root hands it over."""
    journal: Journal = []
    chain = FakeChain(served)
    sink = FakeSink(journal)
    document = FakeCursorDocument(journal, cursor or WatcherState(), None if cursor is None else 1)
    metrics = ServiceMetrics("chain-watcher")
    series = WatcherMetrics(metrics)
    loaded = Cursor(document, series, "chain_watcher/cursor")
    await loaded.load()
    watcher = Watcher(
        ChainWatcherSettings(**settings),  # type: ignore[arg-type]
        rpc=chain,
        chain_state=chain,
        subscribe=no_websocket,
        sink=sink,
        cursor=loaded,
        series=series,
        rand=lambda: 0.5,
    )
    return WatcherRig(watcher, chain, sink, document, metrics, journal)
