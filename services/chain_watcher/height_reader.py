"""Reading one height as the query node serves it, and telling "not served yet" from a failure."""

from __future__ import annotations

from services.chain_watcher.chain_client import ChainError, QueryError, RpcError
from services.chain_watcher.chain_view import ChainView
from services.chain_watcher.core import (
    ObservedBlock,
    ObservedPlan,
    Refusal,
    classify_block_refusal,
    frame_disagrees,
    is_future_state_error,
)
from services.chain_watcher.failures import _TRANSIENT
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.observer import ChainObserver
from services.chain_watcher.ports import ChainRpc, ChainState
from shared.logging import get_logger

__all__ = ["HeightNotServed", "HeightReader"]

log = get_logger("services.chain_watcher.service")  # the logger name operators filter on


class HeightNotServed(ChainError):
    """The query node does not serve `height` yet: wait for it, do not publish it."""

    def __init__(self, message: str, height: int) -> None:
        super().__init__(message)
        self.height = height


class HeightReader:
    """Reads one height as the query node serves it: its block, and the chain's state there."""

    def __init__(
        self,
        view: ChainView,
        observer: ChainObserver,
        rpc: ChainRpc,
        chain_state: ChainState,
        series: WatcherMetrics,
    ) -> None:
        self.view = view
        self.observer = observer
        self.rpc = rpc
        self.chain_state = chain_state
        self.series = series

    async def block(self, height: int) -> ObservedBlock:
        """Block `height` as the query node serves it; `HeightNotServed` when it has not got it yet."""
        try:
            block = await self.rpc.block(height)
        except RpcError as exc:
            return self._refused_block(height, exc)
        self.observer.note_served(height)
        frames = self.view.frames.get(height, [])
        if not frames:
            self.series.blocks_backfilled.inc()
        for frame in frames:
            if frame_disagrees(frame, block):
                self.series.frames_contradicted.inc()
                log.warning(
                    "a websocket frame disagrees with the block the node serves; publishing the node's",
                    extra={"height": height, "frame_hash": frame.hash, "hash": block.hash},
                )
        return block

    def _refused_block(self, height: int, exc: RpcError) -> ObservedBlock:
        """A height the node refused: not there yet (wait), pruned (height only), or an error."""
        refusal = classify_block_refusal(height, str(exc), self.view.earliest)
        if refusal.kind is Refusal.FUTURE:
            if refusal.node_height is not None:
                self.observer.note_served(refusal.node_height)
            raise HeightNotServed(str(exc), height) from None
        if refusal.kind is Refusal.PRUNED:
            log.warning(
                "block pruned on the node; publishing its height only",
                extra={"height": height, "earliest": self.view.earliest, "error": str(exc)},
            )
            return ObservedBlock(height)
        raise exc

    async def chain_state_at(self, height: int) -> tuple[list[ObservedPlan] | None, str | None]:
        """Plans and version as of block `height`, always pinned to it."""
        try:
            plans = await self.chain_state.partial_upgrades(height)
            return plans, await self.chain_state.mlnode_version(height)
        except QueryError as exc:
            if exc.code in _TRANSIENT:
                raise
            if is_future_state_error(str(exc)):
                raise HeightNotServed(str(exc), height) from None
            log.info(
                "state at this height is not queryable; reading it at a later height",
                extra={"height": height, "error": str(exc)},
            )
            return None, None
