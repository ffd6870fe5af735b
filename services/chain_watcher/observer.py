"""The websocket and `/status` loops: they learn what the node serves and write the `ChainView`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from services.chain_watcher.chain_client import ChainError
from services.chain_watcher.chain_view import MAX_FRAMES_PER_HEIGHT, MAX_HINTS, ChainView
from services.chain_watcher.core import ObservedBlock, backoff_delay, lag_blocks
from services.chain_watcher.cursor import Cursor
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.ports import ChainRpc, FrameSource
from services.chain_watcher.settings import ChainWatcherSettings
from shared.logging import get_logger

__all__ = ["ChainObserver"]

log = get_logger("services.chain_watcher.service")  # the logger name operators filter on


class ChainObserver:
    """The websocket and status loops: they only learn about the node and write the `ChainView`."""

    def __init__(
        self,
        settings: ChainWatcherSettings,
        view: ChainView,
        cursor: Cursor,
        rpc: ChainRpc,
        subscribe: FrameSource,
        series: WatcherMetrics,
        rand: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.view = view
        self.cursor = cursor
        self.rpc = rpc
        self.subscribe = subscribe
        self.series = series
        self.rand = rand

    # -- what the loops learn -------------------------------------------------------------

    def note_frame(self, frame: ObservedBlock) -> None:
        """A websocket frame says block `frame.height` exists: a hint to ask `/block`, nothing more."""
        view, last = self.view, self.cursor.state.last_height
        if last is None or frame.height > last:
            seen = view.frames.setdefault(frame.height, [])
            if len(seen) < MAX_FRAMES_PER_HEIGHT and frame not in seen:
                seen.append(frame)
            while len(view.frames) > MAX_HINTS:
                del view.frames[min(view.frames)]
        if view.claimed is None or frame.height > view.claimed:
            view.claimed = frame.height
            self.series.websocket_height.set(frame.height)
        view.work_arrived.set()

    def note_served(self, height: int) -> None:
        """The query node serves block `height` (its /status or /block said so)."""
        view = self.view
        if view.chain_height is None or height > view.chain_height:
            view.chain_height = height
            self.series.chain_height.set(height)
        if view.served is None or height > view.served:
            view.served = height
            view.served_rose.set()
            view.work_arrived.set()
        self.update_lag()

    def update_lag(self) -> None:
        self.series.lag.set(lag_blocks(self.cursor.state.last_height, self.view.chain_height))

    def _on_malformed(self, reason: str, frame: str) -> None:
        self.series.malformed_frames.inc()
        log.warning("malformed websocket frame skipped", extra={"reason": reason, "frame": frame})

    def _on_ignored(self, event_type: str) -> None:
        log.info("ignoring an event of another type", extra={"event_type": event_type})

    def _set_websocket(self, connected: bool) -> None:
        self.view.websocket_connected = connected
        self.series.websocket_connected.set(1 if connected else 0)

    # -- the websocket loop ---------------------------------------------------------------

    async def follow_websocket(self) -> None:
        """Subscribe, read frames until the socket drops, back off, again; forever."""
        url = self.settings.resolved_websocket_url
        attempt = 0
        while True:
            if await self._read_one_subscription(url):
                attempt = 0
            delay = backoff_delay(
                attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self.rand()
            )
            attempt += 1
            self.series.reconnects.inc()
            self.view.poll_now.set()  # poll /status during the gap
            await asyncio.sleep(delay)

    async def _read_one_subscription(self, url: str) -> bool:
        """True when it subscribed (so the backoff starts over), whatever ended it."""
        subscribed = False
        try:
            async with self.subscribe(self._on_malformed, self._on_ignored) as subscription:
                self._set_websocket(True)
                subscribed = True
                log.info("subscribed to NewBlock", extra={"url": url})
                self.view.poll_now.set()  # catch up at once on what the gap may have hidden
                async for block in subscription.blocks():
                    self.note_frame(block)
        except ChainError as exc:
            log.warning("websocket lost; reconnecting", extra={"url": url, "error": str(exc)})
        finally:
            self._set_websocket(False)
        return subscribed

    # -- the status loop ------------------------------------------------------------------

    async def poll_status(self) -> None:
        """Ask `/status` every interval (sooner when asked to), forever."""
        while True:
            await self.poll_status_once()
            await self._wait_for_next_poll()

    async def poll_status_once(self) -> None:
        view = self.view
        try:
            status = await self.rpc.status()
        except ChainError as exc:
            if view.reachable or view.served is None:
                log.warning("chain unreachable", extra={"url": self.settings.rpc_url, "error": str(exc)})
            view.reachable = False
            self.series.errors.labels(kind="rpc").inc()
            return
        if not view.reachable:
            log.info("chain reachable", extra={"height": status.height, "catching_up": status.catching_up})
        view.reachable = True
        view.catching_up = status.catching_up
        view.earliest = status.earliest_height
        last = self.cursor.state.last_height
        if last is not None and status.height < last:
            log.warning(
                "the chain is below the cursor (a different or reset chain?); waiting for it",
                extra={"height": status.height, "cursor": last},
            )
        view.chain_height = status.height
        self.series.chain_height.set(status.height)
        self.note_served(status.height)

    async def _wait_for_next_poll(self) -> None:
        settings = self.settings
        interval = (
            settings.status_check_interval_s if self.view.websocket_connected else settings.poll_interval_s
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await self.view.poll_now.wait()
        self.view.poll_now.clear()
