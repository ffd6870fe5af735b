"""The watcher's cursor in KV: the last published height, moved only by compare-and-swap."""

from __future__ import annotations

from services.chain_watcher.core import CorruptState, WatcherState
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.ports import CursorDocument
from shared.kv_store import StaleRevisionError
from shared.logging import get_logger

__all__ = ["STATE_KEY", "Cursor"]

STATE_KEY = "cursor"

log = get_logger("services.chain_watcher.service")  # the logger name operators filter on


class _CursorMoved(Exception):
    """The stored cursor is not the one this watcher last read or wrote."""


class Cursor:
    """The last published height and what was known at it; it moves only after JetStream acked.

    Only one chain-watcher may write it: a conflict means another one runs, so it is logged,
    re-read and raised (the sync loop retries from the fresh cursor), never merged.
    """

    def __init__(self, document: CursorDocument, series: WatcherMetrics, where: str) -> None:
        self.document = document
        self.series = series
        self.where = where  # bucket/key, for the operator
        self.state = WatcherState()

    async def load(self) -> WatcherState:
        try:
            self.state = await self.document.load()
        except CorruptState:
            log.error("cannot read the cursor; fix or delete KV key %s", self.where)
            raise
        if self.document.revision is None:
            log.info("no cursor yet: starting at the chain's current height")
        else:
            log.info(
                "resuming from the stored cursor",
                extra={
                    "height": self.state.last_height,
                    "version": self.state.chain_version,
                    "known_plans": len(self.state.plans),
                    "revision": self.document.revision,
                },
            )
        self.series.cursor_height.set(self.state.last_height or 0)
        return self.state

    async def save(self, state: WatcherState) -> None:
        based_on, revision = self.state, self.document.revision

        def replace(current: WatcherState) -> WatcherState:
            if current != based_on:
                raise _CursorMoved
            return state

        try:
            await self.document.mutate(replace)
        except (StaleRevisionError, _CursorMoved):
            log.error("another chain-watcher changed the cursor; re-reading it (run only one per chain)")
            await self.load()
            raise StaleRevisionError(STATE_KEY, revision or 0) from None
        self.state = state
        self.series.cursor_height.set(state.last_height or 0)
