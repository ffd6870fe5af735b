"""What the chain-watcher needs from the world, as Protocols: the adapters in `service.py`
(CometBFT RPC, the NewBlock websocket, Cosmos gRPC, JetStream, the KV cursor) satisfy them, and
the fakes in `tests/unit/chain_watcher_fakes.py` stand in for them without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from services.chain_watcher.core import ObservedBlock, ObservedPlan, WatcherState
from shared.bus import Published
from shared.chain_status import ChainStatus

__all__ = ["BlockFrames", "ChainRpc", "ChainState", "CursorDocument", "EventSink", "FrameSource"]


class ChainRpc(Protocol):
    """CometBFT's `/status` and `/block` of the query node; failures raise `ChainError`."""

    async def status(self) -> ChainStatus: ...

    async def block(self, height: int) -> ObservedBlock: ...


class ChainState(Protocol):
    """The chain's plans and MLNode version, pinned to a height; failures raise `QueryError`."""

    async def partial_upgrades(self, height: int | None) -> list[ObservedPlan]: ...

    async def mlnode_version(self, height: int | None) -> str: ...


class BlockFrames(Protocol):
    """One open NewBlock subscription; iteration ends with `ChainError` when it drops."""

    def blocks(self) -> AsyncIterator[ObservedBlock]: ...


class FrameSource(Protocol):
    """Opens a NewBlock subscription, reporting malformed and foreign frames to the callbacks."""

    def __call__(
        self, on_malformed: Callable[[str, str], None], on_ignored: Callable[[str], None]
    ) -> AbstractAsyncContextManager[BlockFrames]: ...


class EventSink(Protocol):
    """JetStream: publish with a `Nats-Msg-Id` and wait for the ack."""

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None, *, retry_for_s: float = 0.0
    ) -> Published: ...

    async def jetstream_ready(self, timeout_s: float = 1.0) -> bool: ...


class CursorDocument(Protocol):
    """The cursor's KV document (`shared.kv_document.KvDocument` of `WatcherState`)."""

    @property
    def revision(self) -> int | None: ...

    async def load(self) -> WatcherState: ...

    async def mutate(self, fn: Callable[[WatcherState], WatcherState]) -> WatcherState: ...
