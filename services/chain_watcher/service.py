"""The chain-watcher: turns a chain node into durable events on the CHAIN stream.

Three loops share one state:

- the websocket loop subscribes to NewBlock and reconnects forever with jittered exponential
  backoff; a frame is only a hint ("height H may exist"), recorded without waiting on NATS;
- the status loop polls `/status`: what the query node serves (and its earliest retained block),
  the fallback while the websocket is down, a safety net (and the lag gauge) while it is up;
- the sync loop is the only writer. One height per step, from the cursor to the newest height:
  the block from `/block` (its own hash and time, never the frame's), the plans and
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
import contextlib
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import nats.errors
import uvicorn
from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from services.chain_watcher.chain_client import (
    ChainError,
    ChainQueries,
    CometRpc,
    NewBlockSubscription,
    QueryError,
    RpcError,
)
from services.chain_watcher.core import (
    CorruptState,
    NextHeight,
    ObservedBlock,
    ObservedPlan,
    Refusal,
    Step,
    WatcherState,
    backoff_delay,
    classify_block_refusal,
    decide,
    describe_plan,
    frame_disagrees,
    is_another_chain,
    is_future_state_error,
    lag_blocks,
    plan_next,
)
from services.chain_watcher.settings import ChainWatcherSettings
from shared.bus import Bus, BusError
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled
from shared.kv_store import StaleRevisionError, VersionedStore
from shared.logging import get_logger
from shared.metrics import PREFIX, ServiceMetrics
from shared.ops_app import ReadinessCheck, add_ops_routes

__all__ = ["SERVICE", "STATE_KEY", "ChainWatcher", "HeightNotServed", "WatcherMetrics"]

SERVICE = "chain-watcher"
STATE_KEY = "cursor"
MAX_HINTS = 10_000
MAX_FRAMES_PER_HEIGHT = 4  # distinct frames kept per height (a forged one and the real one, ...)
# gRPC codes that mean "try again later", as opposed to "this node cannot answer at that height".
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)

log = get_logger(__name__)


class HeightNotServed(ChainError):
    """The query node does not serve `height` yet: wait for it, do not publish it."""

    def __init__(self, message: str, height: int) -> None:
        super().__init__(message)
        self.height = height


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, QueryError):
        return "grpc"
    if isinstance(exc, ChainError):
        return "rpc"
    if isinstance(exc, StaleRevisionError):
        return "kv"
    if isinstance(exc, BusError | nats.errors.Error):
        return "nats"
    return "io"


class WatcherMetrics:
    """The chain-watcher's own series, on the service's registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        r = metrics.registry
        self.blocks_seen = Counter(
            f"{PREFIX}_chain_blocks_seen_total", "Blocks published to chain.block", registry=r
        )
        self.blocks_backfilled = Counter(
            f"{PREFIX}_chain_blocks_backfilled_total",
            "Blocks no websocket event announced, found from /status and fetched with /block",
            registry=r,
        )
        self.height_waits = Counter(
            f"{PREFIX}_chain_height_waits_total",
            "Times a height was asked for before the query node served it (frame ahead, node lagging)",
            registry=r,
        )
        self.frames_contradicted = Counter(
            f"{PREFIX}_chain_frames_contradicted_total",
            "Websocket frames whose hash differs from the block the query node serves",
            registry=r,
        )
        self.chain_replaced = Counter(
            f"{PREFIX}_chain_replaced_total",
            "Times the node served another chain than the cursor's (a reset chain); the cursor started over",
            registry=r,
        )
        self.blocks_skipped = Counter(
            f"{PREFIX}_chain_blocks_skipped_total",
            "Blocks beyond max_backfill_blocks, never published",
            registry=r,
        )
        self.plans_published = Counter(
            f"{PREFIX}_chain_plans_published_total", "Partial upgrades announced (new or changed)", registry=r
        )
        self.plans_refused = Counter(
            f"{PREFIX}_chain_plans_refused_total", "Partial upgrades that cannot be announced", registry=r
        )
        self.versions_published = Counter(
            f"{PREFIX}_chain_versions_published_total", "Chain MLNodeVersion snapshots published", registry=r
        )
        self.reconnects = Counter(
            f"{PREFIX}_chain_websocket_reconnects_total", "Websocket reconnect attempts", registry=r
        )
        self.malformed_frames = Counter(
            f"{PREFIX}_chain_malformed_frames_total", "Websocket frames logged and skipped", registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_chain_watcher_errors_total", "Failed steps, by cause", ["kind"], registry=r
        )
        self.websocket_connected = Gauge(
            f"{PREFIX}_chain_websocket_connected", "1 while subscribed to NewBlock", registry=r
        )
        self.chain_height = Gauge(
            f"{PREFIX}_chain_height", "Newest height the query node serves (/status, /block)", registry=r
        )
        self.websocket_height = Gauge(
            f"{PREFIX}_chain_websocket_height", "Newest height a websocket frame claimed", registry=r
        )
        self.cursor_height = Gauge(
            f"{PREFIX}_chain_watcher_cursor_height", "Last height published and persisted", registry=r
        )
        self.lag = Gauge(f"{PREFIX}_chain_lag_blocks", "Chain height minus the cursor", registry=r)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handling: `__main__` owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ChainWatcher:
    def __init__(self, settings: ChainWatcherSettings, *, rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rand = rand
        self.metrics = ServiceMetrics(SERVICE)
        self.m = WatcherMetrics(self.metrics)
        self.rpc = CometRpc(settings.rpc_url, settings.request_timeout_s)
        self.queries = ChainQueries(settings.grpc_address, settings.request_timeout_s, settings.page_size)
        self.bus: Bus | None = None
        self.store: VersionedStore | None = None
        self.state = WatcherState()
        self._revision: int | None = None
        self.chain_height: int | None = None
        self.chain_reachable = False
        self.catching_up = False
        self.websocket_connected = False
        self.ops_port: int | None = None
        self._served: int | None = None  # the newest height the query node answered for
        self._claimed: int | None = None  # the newest height a websocket frame claimed
        self._earliest: int | None = None  # the query node's earliest retained block
        self._frames: dict[int, list[ObservedBlock]] = {}  # frames above the cursor, for comparison
        self._snapshot_due_at = 0.0  # loop time of the next version snapshot (0: at start-up)
        self._anchor_checked_at: int | None = None  # served height the cursor's chain was last checked at
        self._waiting_for: int | None = None  # the height last refused as not served yet
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._served_up = asyncio.Event()  # the query node's height went up

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled. Only a corrupt cursor or a bug ends it early (with an exception)."""
        ops, ops_task = await self._start_ops()
        try:
            await self._open_bus()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._websocket_loop(), name="websocket")
                tasks.create_task(self._status_loop(), name="status")
                tasks.create_task(self._sync_loop(), name="sync")
        finally:
            ops.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.shield(self._close(ops_task))

    async def _close(self, ops_task: asyncio.Task[None]) -> None:
        await self.rpc.aclose()
        await self.queries.aclose()
        if self.bus is not None:
            await self.bus.close()
        await ops_task

    async def _open_bus(self) -> None:
        self.bus = await Bus.connect(self.settings.nats, SERVICE, self.metrics, give_up_after_s=None)
        kv = await self.bus.bind_bucket(self.settings.bucket)  # provisioned: `mlnode-upgrade nats provision`
        self.store = VersionedStore(kv)
        await self._load_state()

    async def _load_state(self) -> None:
        assert self.store is not None
        entry = await self.store.get(STATE_KEY)
        if entry is None:
            self.state, self._revision = WatcherState(), None
            log.info("no cursor yet: starting at the chain's current height")
        else:
            try:
                self.state = WatcherState.from_json(entry.value)
            except CorruptState:
                log.error(
                    "cannot read the cursor; fix or delete KV key %s/%s", self.settings.bucket, STATE_KEY
                )
                raise
            self._revision = entry.revision
            log.info(
                "resuming from the stored cursor",
                extra={
                    "height": self.state.last_height,
                    "version": self.state.chain_version,
                    "known_plans": len(self.state.plans),
                    "revision": entry.revision,
                },
            )
        self.m.cursor_height.set(self.state.last_height or 0)

    # -- observing the chain ----------------------------------------------------------------

    def _on_frame(self, frame: ObservedBlock) -> None:
        """A websocket frame says block `frame.height` exists: a hint to ask `/block`, nothing more."""
        last = self.state.last_height
        if last is None or frame.height > last:
            seen = self._frames.setdefault(frame.height, [])
            if len(seen) < MAX_FRAMES_PER_HEIGHT and frame not in seen:
                seen.append(frame)
            while len(self._frames) > MAX_HINTS:
                del self._frames[min(self._frames)]
        if self._claimed is None or frame.height > self._claimed:
            self._claimed = frame.height
            self.m.websocket_height.set(frame.height)
        self._wake.set()

    def _on_served(self, height: int) -> None:
        """The query node serves block `height` (its /status or /block said so)."""
        if self.chain_height is None or height > self.chain_height:
            self.chain_height = height
            self.m.chain_height.set(height)
        if self._served is None or height > self._served:
            self._served = height
            self._served_up.set()
            self._wake.set()
        self._update_lag()

    def _update_lag(self) -> None:
        self.m.lag.set(lag_blocks(self.state.last_height, self.chain_height))

    def _on_malformed(self, reason: str, frame: str) -> None:
        self.m.malformed_frames.inc()
        log.warning("malformed websocket frame skipped", extra={"reason": reason, "frame": frame})

    def _on_ignored(self, event_type: str) -> None:
        log.info("ignoring an event of another type", extra={"event_type": event_type})

    def _set_websocket(self, connected: bool) -> None:
        self.websocket_connected = connected
        self.m.websocket_connected.set(1 if connected else 0)

    async def _websocket_loop(self) -> None:
        url = self.settings.resolved_websocket_url
        attempt = 0
        while True:
            try:
                async with NewBlockSubscription.open(
                    url,
                    open_timeout_s=self.settings.request_timeout_s,
                    max_message_bytes=self.settings.websocket_max_message_bytes,
                    on_malformed=self._on_malformed,
                    on_ignored=self._on_ignored,
                ) as subscription:
                    self._set_websocket(True)
                    attempt = 0
                    log.info("subscribed to NewBlock", extra={"url": url})
                    self._kick.set()  # catch up at once on what the gap may have hidden
                    async for block in subscription.blocks():
                        self._on_frame(block)
            except ChainError as exc:
                log.warning("websocket lost; reconnecting", extra={"url": url, "error": str(exc)})
            finally:
                self._set_websocket(False)
            delay = backoff_delay(
                attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self.rand()
            )
            attempt += 1
            self.m.reconnects.inc()
            self._kick.set()  # poll /status during the gap
            await asyncio.sleep(delay)

    async def _status_loop(self) -> None:
        while True:
            try:
                status = await self.rpc.status()
            except ChainError as exc:
                if self.chain_reachable or self._served is None:
                    log.warning("chain unreachable", extra={"url": self.settings.rpc_url, "error": str(exc)})
                self.chain_reachable = False
                self.m.errors.labels(kind="rpc").inc()
            else:
                if not self.chain_reachable:
                    log.info(
                        "chain reachable", extra={"height": status.height, "catching_up": status.catching_up}
                    )
                self.chain_reachable = True
                self.catching_up = status.catching_up
                self._earliest = status.earliest_height
                last = self.state.last_height
                if last is not None and status.height < last:
                    log.warning(
                        "the chain is below the cursor (a different or reset chain?); waiting for it",
                        extra={"height": status.height, "cursor": last},
                    )
                self.chain_height = status.height
                self.m.chain_height.set(status.height)
                self._on_served(status.height)
            interval = (
                self.settings.status_check_interval_s
                if self.websocket_connected
                else self.settings.poll_interval_s
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._kick.wait()
            self._kick.clear()

    # -- publishing -------------------------------------------------------------------------

    def _next(self) -> NextHeight | None:
        return plan_next(
            self.state.last_height, self._served, self._claimed, self.settings.max_backfill_blocks
        )

    def _snapshot_due(self) -> bool:
        return asyncio.get_running_loop().time() >= self._snapshot_due_at

    def _work_pending(self) -> bool:
        if self._next() is not None:
            return True
        # A snapshot without a new block is taken at the cursor, so there must be one.
        return (self.state.last_height is not None and self._snapshot_due()) or self._genesis_snapshot_due(
            self._snapshot_due()
        )

    def _genesis_snapshot_due(self, due: bool) -> bool:
        """The start-up snapshot of a chain that has no block yet (only once, before any block)."""
        return due and self.state.last_height is None and self._served == 0 and self._snapshot_due_at == 0.0

    async def _idle(self) -> None:
        """Wait for a new height, or until the next snapshot is due."""
        timeout: float | None = None
        if self.state.last_height is not None:
            timeout = max(0.0, self._snapshot_due_at - asyncio.get_running_loop().time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _sync_loop(self) -> None:
        attempt = 0
        waits = 0
        while True:
            if not self._work_pending():
                await self._idle()
            self._wake.clear()
            if not self._work_pending():
                continue
            self._served_up.clear()
            try:
                await self._step()
                attempt = waits = 0
            except HeightNotServed as exc:
                # Not a failure: ask again, no faster than the backoff allows and no slower than a
                # /status poll, sooner when /status reports the query node has moved on.
                poll = self.settings.poll_interval_s
                delay = backoff_delay(waits, min(self.settings.reconnect_initial_s, poll), poll, self.rand())
                waits += 1
                self.m.height_waits.inc()
                if self._waiting_for != exc.height:
                    self._waiting_for = exc.height
                    log.info(
                        "height not served by the query node yet; waiting for it",
                        extra={"height": exc.height, "claimed": self._claimed, "error": str(exc)},
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._served_up.wait()
            except (
                ChainError,
                BusError,
                StaleRevisionError,
                nats.errors.Error,
                OSError,
                TimeoutError,
            ) as exc:
                kind = _error_kind(exc)
                self.m.errors.labels(kind=kind).inc()
                delay = backoff_delay(
                    attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self.rand()
                )
                attempt += 1
                log.warning(
                    "step failed; retrying",
                    extra={
                        "error": str(exc),
                        "kind": kind,
                        "retry_in_s": round(delay, 3),
                        "height": self.state.last_height,
                    },
                )
                await asyncio.sleep(delay)

    async def _step(self) -> None:
        """Publish the next height served (with the snapshot when due), or only the snapshot."""
        if await self._cursor_is_from_another_chain():
            await self._start_over()
            return
        nxt = self._next()
        snapshot = self._snapshot_due()
        if nxt is not None and nxt.skipped:
            self.m.blocks_skipped.inc(nxt.skipped)
            log.warning(
                "too far behind: skipping blocks",
                extra={
                    "skipped": nxt.skipped,
                    "from_height": (self.state.last_height or 0) + 1,
                    "height": nxt.height,
                },
            )
        if nxt is not None:
            blocks = [await self._block(nxt.height)]
            at = nxt.height
        elif self.state.last_height is not None and snapshot:
            blocks, at = [], self.state.last_height
        elif self._genesis_snapshot_due(snapshot):
            blocks, at = [], 0  # a chain with no block yet: its version, with no height
        else:
            return
        plans, version = await self._read_chain_state(at)
        step = decide(self.state, blocks, plans, version, observed_at=at, announce_version=snapshot)
        await self._publish(step)
        await self._save(step.state)
        if snapshot or step.version is not None:
            if snapshot and step.version is None:
                log.warning(
                    "version snapshot skipped: the chain's state at this height could not be read",
                    extra={"height": at, "version": version},
                )
            interval = self.settings.version_snapshot_interval_s
            self._snapshot_due_at = asyncio.get_running_loop().time() + interval
        self._waiting_for = None
        for h in [h for h in self._frames if h <= (self.state.last_height or 0)]:
            del self._frames[h]

    async def _cursor_is_from_another_chain(self) -> bool:
        """With the node below the cursor: lagging (wait) or another chain (start over)?

        Asked once per served height: the node's block at the anchor's height decides. A node
        that does not serve that height (pruned, or not there yet) leaves the answer to later.
        """
        anchor, last, served = self.state.anchor, self.state.last_height, self._served
        if anchor is None or last is None or served is None or served >= last or served < anchor[0]:
            return False
        if self._anchor_checked_at == served:
            return False
        self._anchor_checked_at = served
        try:
            block = await self.rpc.block(anchor[0])
        except ChainError:
            return False
        return is_another_chain(anchor, block)

    async def _start_over(self) -> None:
        """The cursor belongs to another chain: forget it and start at this chain's height."""
        self.m.chain_replaced.inc()
        log.error(
            "the node serves another chain than the cursor's: starting over at its current height",
            extra={"cursor": self.state.last_height, "anchor": self.state.anchor, "height": self._served},
        )
        await self._save(WatcherState())
        self._snapshot_due_at = 0.0  # announce the new chain's version at once
        self._anchor_checked_at = None
        self._frames.clear()

    async def _block(self, height: int) -> ObservedBlock:
        """Block `height` as the query node serves it; `HeightNotServed` when it has not got it yet."""
        try:
            block = await self.rpc.block(height)
        except RpcError as exc:
            refusal = classify_block_refusal(height, str(exc), self._earliest)
            if refusal.kind is Refusal.FUTURE:
                if refusal.node_height is not None:
                    self._on_served(refusal.node_height)
                raise HeightNotServed(str(exc), height) from None
            if refusal.kind is Refusal.PRUNED:
                log.warning(
                    "block pruned on the node; publishing its height only",
                    extra={"height": height, "earliest": self._earliest, "error": str(exc)},
                )
                return ObservedBlock(height)
            raise
        self._on_served(height)
        frames = self._frames.get(height, [])
        if not frames:
            self.m.blocks_backfilled.inc()
        for frame in frames:
            if frame_disagrees(frame, block):
                self.m.frames_contradicted.inc()
                log.warning(
                    "a websocket frame disagrees with the block the node serves; publishing the node's",
                    extra={"height": height, "frame_hash": frame.hash, "hash": block.hash},
                )
        return block

    async def _read_chain_state(self, height: int) -> tuple[list[ObservedPlan] | None, str | None]:
        """Plans and version as of block `height`, always pinned to it."""
        try:
            return await self.queries.partial_upgrades(height), await self.queries.mlnode_version(height)
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

    async def _publish(self, step: Step) -> None:
        assert self.bus is not None
        for plan, reason in step.refused_plans:
            self.m.plans_refused.inc()
            log.warning(
                "partial upgrade not announced",
                extra={"event": UpgradeScheduled.SUBJECT, **describe_plan(plan), "reason": reason},
            )
        if step.refused_version is not None:
            raw, reason = step.refused_version
            log.warning(
                "chain MLNodeVersion not announced",
                extra={
                    "event": ChainVersionObserved.SUBJECT,
                    "version": raw,
                    "reason": reason,
                    "height": self.state.last_height,
                },
            )
        for out in step.publishes:
            event = out.event
            ack = await self.bus.publish_raw(
                event.SUBJECT, event.to_json(), out.msg_id, retry_for_s=self.settings.publish_retry_s
            )
            if isinstance(event, BlockCommitted):
                self.m.blocks_seen.inc()
                log.debug(
                    "block published",
                    extra={"event": event.SUBJECT, "height": event.height, "duplicate": ack.duplicate},
                )
            elif isinstance(event, UpgradeScheduled):
                if not ack.duplicate:
                    self.m.plans_published.inc()
                log.info(
                    "upgrade plan published",
                    extra={
                        "event": event.SUBJECT,
                        **describe_plan(event),
                        "msg_id": out.msg_id,
                        "duplicate": ack.duplicate,
                        "stream_seq": ack.seq,
                    },
                )
            elif isinstance(event, ChainVersionObserved):
                if not ack.duplicate:
                    self.m.versions_published.inc()
                log.info(
                    "chain version published",
                    extra={
                        "event": event.SUBJECT,
                        "version": str(event.current_version),
                        "height": event.height,
                        "duplicate": ack.duplicate,
                        "stream_seq": ack.seq,
                    },
                )

    async def _save(self, state: WatcherState) -> None:
        assert self.store is not None
        try:
            self._revision = await self.store.write(STATE_KEY, state.to_json(), self._revision)
        except StaleRevisionError:
            log.error("another chain-watcher changed the cursor; re-reading it (run only one per chain)")
            await self._load_state()
            raise
        self.state = state
        self.m.cursor_height.set(state.last_height or 0)
        self._update_lag()

    # -- ops --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "cursor": self.state.last_height,
            "chain_height": self.chain_height,
            "served_height": self._served,
            "claimed_height": self._claimed,
            "lag": lag_blocks(self.state.last_height, self.chain_height),
            "chain_reachable": self.chain_reachable,
            "catching_up": self.catching_up,
            "websocket_connected": self.websocket_connected,
            "chain_version": self.state.chain_version,
            "known_plans": len(self.state.plans),
        }

    async def _nats_ready(self) -> bool:
        return self.bus is not None and self.store is not None and await self.bus.jetstream_ready()

    def _lag_ok(self) -> bool:
        return (
            self.state.last_height is not None
            and lag_blocks(self.state.last_height, self.chain_height) <= self.settings.max_lag_blocks
        )

    def ops_app(self) -> FastAPI:
        app = FastAPI(
            title="chain-watcher", docs_url=None, redoc_url=None, openapi_url=None, strict_content_type=False
        )
        add_ops_routes(
            app,
            self.metrics,
            [
                ReadinessCheck("nats", self._nats_ready),
                ReadinessCheck("chain_reachable", lambda: self.chain_reachable),
                ReadinessCheck("chain_synced", lambda: not self.catching_up),
                ReadinessCheck("lag_blocks", self._lag_ok),
            ],
            SERVICE,
        )

        @app.get("/state", include_in_schema=False)
        async def state() -> dict[str, Any]:
            return self.describe()

        return app

    async def _start_ops(self) -> tuple[uvicorn.Server, asyncio.Task[None]]:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it every small response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.http_host, self.settings.http_port))
        self.ops_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.ops_app(), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        server = _Uvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        task.add_done_callback(lambda _: sock.close())
        for _ in range(1000):  # startup takes milliseconds; polling the flag uvicorn sets
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        log.info("ops endpoints serving", extra={"port": self.ops_port, "host": self.settings.http_host})
        return server, task
