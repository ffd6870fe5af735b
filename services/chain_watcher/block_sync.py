"""The sync loop, the only writer: publish the next served height, then move the cursor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from services.chain_watcher.announcer import Announcer
from services.chain_watcher.chain_client import ChainError
from services.chain_watcher.chain_view import ChainView
from services.chain_watcher.core import (
    NextHeight,
    ObservedBlock,
    Step,
    WatcherState,
    backoff_delay,
    decide,
    is_another_chain,
    plan_next,
)
from services.chain_watcher.cursor import Cursor
from services.chain_watcher.failures import RETRIED, error_kind
from services.chain_watcher.height_reader import HeightNotServed, HeightReader
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.observer import ChainObserver
from services.chain_watcher.settings import ChainWatcherSettings
from shared.logging import get_logger

__all__ = ["BlockSync"]

log = get_logger("services.chain_watcher.service")  # the logger name operators filter on


class BlockSync:
    """The sync loop, the only writer: publish the next served height, then move the cursor."""

    def __init__(
        self,
        settings: ChainWatcherSettings,
        view: ChainView,
        cursor: Cursor,
        observer: ChainObserver,
        reader: HeightReader,
        announcer: Announcer,
        series: WatcherMetrics,
        rand: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.view = view
        self.cursor = cursor
        self.observer = observer
        self.reader = reader
        self.announcer = announcer
        self.series = series
        self.rand = rand
        self._snapshot_due_at = 0.0  # loop time of the next version snapshot (0: at start-up)
        self._anchor_checked_at: int | None = None  # served height the cursor's chain was last checked at
        self._waiting_for: int | None = None  # the height last refused as not served yet
        self._failures = 0  # steps failed in a row (their backoff)
        self._waits = 0  # heights asked for in a row before the node served them

    # -- when to step ---------------------------------------------------------------------

    def _next(self) -> NextHeight | None:
        return plan_next(
            self.cursor.state.last_height,
            self.view.served,
            self.view.claimed,
            self.settings.max_backfill_blocks,
        )

    def _snapshot_due(self) -> bool:
        return asyncio.get_running_loop().time() >= self._snapshot_due_at

    def has_work(self) -> bool:
        if self._next() is not None:
            return True
        # A snapshot without a new block is taken at the cursor, so there must be one.
        due = self._snapshot_due()
        return (self.cursor.state.last_height is not None and due) or self._genesis_snapshot_due(due)

    def _genesis_snapshot_due(self, due: bool) -> bool:
        """The start-up snapshot of a chain that has no block yet (only once, before any block)."""
        return (
            due
            and self.cursor.state.last_height is None
            and self.view.served == 0
            and self._snapshot_due_at == 0.0
        )

    async def _idle(self) -> None:
        """Wait for a new height, or until the next snapshot is due."""
        timeout: float | None = None
        if self.cursor.state.last_height is not None:
            timeout = max(0.0, self._snapshot_due_at - asyncio.get_running_loop().time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.view.work_arrived.wait()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not self.has_work():
                await self._idle()
            self.view.work_arrived.clear()
            if not self.has_work():
                continue
            self.view.served_rose.clear()
            try:
                await self.step()
                self._failures = self._waits = 0
            except HeightNotServed as exc:
                await self._wait_for_height(exc)
            except RETRIED as exc:
                await self._back_off(exc)

    async def _wait_for_height(self, exc: HeightNotServed) -> None:
        """Not a failure: ask again, no faster than the backoff allows and no slower than a
        /status poll, sooner when /status reports the query node has moved on."""
        poll = self.settings.poll_interval_s
        delay = backoff_delay(self._waits, min(self.settings.reconnect_initial_s, poll), poll, self.rand())
        self._waits += 1
        self.series.height_waits.inc()
        if self._waiting_for != exc.height:
            self._waiting_for = exc.height
            log.info(
                "height not served by the query node yet; waiting for it",
                extra={"height": exc.height, "claimed": self.view.claimed, "error": str(exc)},
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.view.served_rose.wait()

    async def _back_off(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        self.series.errors.labels(kind=kind).inc()
        delay = backoff_delay(
            self._failures, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self.rand()
        )
        self._failures += 1
        log.warning(
            "step failed; retrying",
            extra={
                "error": str(exc),
                "kind": kind,
                "retry_in_s": round(delay, 3),
                "height": self.cursor.state.last_height,
            },
        )
        await asyncio.sleep(delay)

    # -- one step -------------------------------------------------------------------------

    async def step(self) -> None:
        """Publish the next height served (with the snapshot when due), or only the snapshot."""
        if await self._cursor_is_from_another_chain():
            await self._start_over()
            return
        snapshot = self._snapshot_due()
        target = await self._target(snapshot)
        if target is None:
            return
        blocks, at = target
        plans, version = await self.reader.chain_state_at(at)
        state = self.cursor.state
        step = decide(state, blocks, plans, version, observed_at=at, announce_version=snapshot)
        await self.announcer.announce(step, state.last_height)
        await self.cursor.save(step.state)
        self.observer.update_lag()
        self._after_step(step, snapshot, at, version)

    async def _target(self, snapshot: bool) -> tuple[list[ObservedBlock], int] | None:
        """The blocks to publish and the height to read the chain's state at (None: nothing)."""
        nxt, last = self._next(), self.cursor.state.last_height
        if nxt is not None and nxt.skipped:
            self.series.blocks_skipped.inc(nxt.skipped)
            log.warning(
                "too far behind: skipping blocks",
                extra={"skipped": nxt.skipped, "from_height": (last or 0) + 1, "height": nxt.height},
            )
        if nxt is not None:
            return [await self.reader.block(nxt.height)], nxt.height
        if last is not None and snapshot:
            return [], last
        if self._genesis_snapshot_due(snapshot):
            return [], 0  # a chain with no block yet: its version, with no height
        return None

    def _after_step(self, step: Step, snapshot: bool, at: int, version: str | None) -> None:
        if snapshot or step.version is not None:
            if snapshot and step.version is None:
                log.warning(
                    "version snapshot skipped: the chain's state at this height could not be read",
                    extra={"height": at, "version": version},
                )
            interval = self.settings.version_snapshot_interval_s
            self._snapshot_due_at = asyncio.get_running_loop().time() + interval
        self._waiting_for = None
        frames = self.view.frames
        for h in [h for h in frames if h <= (self.cursor.state.last_height or 0)]:
            del frames[h]

    async def _cursor_is_from_another_chain(self) -> bool:
        """With the node below the cursor: lagging (wait) or another chain (start over)?

        Asked once per served height: the node's block at the anchor's height decides. A node
        that does not serve that height (pruned, or not there yet) leaves the answer to later.
        """
        state, served = self.cursor.state, self.view.served
        anchor, last = state.anchor, state.last_height
        if anchor is None or last is None or served is None or served >= last or served < anchor[0]:
            return False
        if self._anchor_checked_at == served:
            return False
        self._anchor_checked_at = served
        try:
            block = await self.reader.rpc.block(anchor[0])
        except ChainError:
            return False
        return is_another_chain(anchor, block)

    async def _start_over(self) -> None:
        """The cursor belongs to another chain: forget it and start at this chain's height."""
        self.series.chain_replaced.inc()
        log.error(
            "the node serves another chain than the cursor's: starting over at its current height",
            extra={
                "cursor": self.cursor.state.last_height,
                "anchor": self.cursor.state.anchor,
                "height": self.view.served,
            },
        )
        await self.cursor.save(WatcherState())
        self.observer.update_lag()
        self._snapshot_due_at = 0.0  # announce the new chain's version at once
        self._anchor_checked_at = None
        self.view.frames.clear()
