"""The chain-watcher's logic behind its ports: turns a chain node into ordered events on CHAIN.

Three loops share one `ChainView`:

- the websocket loop (`ChainObserver.follow_websocket`) subscribes to NewBlock and reconnects
  forever with jittered exponential backoff; a frame is only a hint ("height H may exist"),
  recorded without waiting on NATS;
- the status loop (`ChainObserver.poll_status`) asks `/status`: what the query node serves (and
  its earliest retained block), the fallback while the websocket is down, a safety net (and the
  lag gauge) while it is up;
- the sync loop (`BlockSync.run`) is the only writer. One height per step, from the cursor to the
  newest height: the block from `/block` (its own hash and time, never the frame's), the plans and
  `MLNodeVersion` pinned to that height (`x-cosmos-block-height`), then it publishes what
  `core.decide` says and only then advances the cursor in KV with compare-and-swap. A height the
  query node does not serve yet (a frame ran ahead of it, or it lags behind the websocket's node)
  is asked for again with bounded backoff; it is never published early and never skipped. Every
  `version_snapshot_interval_s` (and at start-up) the step also publishes the chain's version and
  stored plans at the newest published height, in the same ordered sequence as the blocks.
  Reading every height matters: a plan can be stored, applied and deleted between two heights
  read further apart. Any failure is retried with backoff; a block never overtakes the plans
  that apply at it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from services.chain_watcher.announcer import Announcer
from services.chain_watcher.block_sync import BlockSync
from services.chain_watcher.chain_view import MAX_FRAMES_PER_HEIGHT, MAX_HINTS, ChainView
from services.chain_watcher.core import WatcherState, lag_blocks
from services.chain_watcher.cursor import STATE_KEY, Cursor
from services.chain_watcher.height_reader import HeightNotServed, HeightReader
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.observer import ChainObserver
from services.chain_watcher.ports import ChainRpc, ChainState, EventSink, FrameSource
from services.chain_watcher.settings import ChainWatcherSettings

__all__ = [
    "MAX_FRAMES_PER_HEIGHT",
    "MAX_HINTS",
    "STATE_KEY",
    "Announcer",
    "BlockSync",
    "ChainObserver",
    "ChainView",
    "Cursor",
    "HeightNotServed",
    "HeightReader",
    "Watcher",
]


class Watcher:
    """The three loops over one `ChainView`, ready to run: the composition root built the ports."""

    def __init__(
        self,
        settings: ChainWatcherSettings,
        *,
        rpc: ChainRpc,
        chain_state: ChainState,
        subscribe: FrameSource,
        sink: EventSink,
        cursor: Cursor,
        series: WatcherMetrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.cursor = cursor
        self.view = ChainView()
        self.observer = ChainObserver(settings, self.view, cursor, rpc, subscribe, series, rand)
        announcer = Announcer(sink, series, settings.publish_retry_s)
        reader = HeightReader(self.view, self.observer, rpc, chain_state, series)
        self.sync = BlockSync(settings, self.view, cursor, self.observer, reader, announcer, series, rand)

    @property
    def state(self) -> WatcherState:
        return self.cursor.state

    async def run(self) -> None:
        """Run until cancelled. Only a corrupt cursor or a bug ends it early (with an exception)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.observer.follow_websocket(), name="websocket")
            tasks.create_task(self.observer.poll_status(), name="status")
            tasks.create_task(self.sync.run(), name="sync")

    # -- what /state and /readyz report ---------------------------------------------------

    def describe(self) -> dict[str, Any]:
        view, state = self.view, self.cursor.state
        return {
            "cursor": state.last_height,
            "chain_height": view.chain_height,
            "served_height": view.served,
            "claimed_height": view.claimed,
            "lag": lag_blocks(state.last_height, view.chain_height),
            "chain_reachable": view.reachable,
            "catching_up": view.catching_up,
            "websocket_connected": view.websocket_connected,
            "chain_version": state.chain_version,
            "known_plans": len(state.plans),
        }

    async def nats_ready(self) -> bool:
        return await self.sink.jetstream_ready()

    def lag_ok(self) -> bool:
        last = self.cursor.state.last_height
        return last is not None and lag_blocks(last, self.view.chain_height) <= self.settings.max_lag_blocks
