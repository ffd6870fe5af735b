"""The chain-watcher: turns a chain node into durable events on the CHAIN stream.

Three loops share one state:

- the websocket loop subscribes to NewBlock and reconnects forever with jittered exponential
  backoff; each event only records "height H exists" (and its hash), so reading never waits on
  NATS;
- the status loop polls `/status`: the fallback while the websocket is down, a safety net (and
  the lag gauge) while it is up;
- the sync loop is the only writer. One height per step, from the cursor to the newest known
  height: the block (from its event, or `/block` when no event carried it), the plans and
  `MLNodeVersion` pinned to that height (`x-cosmos-block-height`), then it publishes what
  `core.decide` says and only then advances the cursor in KV with compare-and-swap. Reading every
  height matters: a plan can be stored, applied and deleted between two heights read further
  apart. Any failure is retried with backoff; a block never overtakes the plans that apply at it.
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
    ObservedBlock,
    ObservedPlan,
    Step,
    WatcherState,
    backoff_delay,
    decide,
    describe_plan,
    lag_blocks,
    next_height,
)
from services.chain_watcher.settings import ChainWatcherSettings
from shared.bus import BucketSpec, Bus, BusError
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled
from shared.kv_store import StaleRevisionError, VersionedStore
from shared.logging import get_logger
from shared.metrics import PREFIX, ServiceMetrics
from shared.ops_app import ReadinessCheck, add_ops_routes

__all__ = ["SERVICE", "STATE_KEY", "ChainWatcher", "WatcherMetrics"]

SERVICE = "chain-watcher"
STATE_KEY = "cursor"
MAX_HINTS = 10_000
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
            "Blocks no event carried, fetched with /block",
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
        self.chain_height = Gauge(f"{PREFIX}_chain_height", "Newest height seen on the chain", registry=r)
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
        self._wanted: int | None = None  # the newest height known to exist
        self._hints: dict[int, ObservedBlock] = {}
        self._announce_version = True  # the start-up snapshot is still due
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()

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
        await self.bus.ensure_streams()
        kv = await self.bus.ensure_bucket(
            BucketSpec(
                self.settings.bucket, "The chain-watcher's cursor: last published block, version, plans", 8
            )
        )
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

    def _observe(self, height: int, hint: ObservedBlock | None = None) -> None:
        """Record that block `height` exists; the sync loop publishes up to it."""
        last = self.state.last_height
        if hint is not None and (last is None or height > last):
            self._hints[height] = hint
            while len(self._hints) > MAX_HINTS:
                del self._hints[min(self._hints)]
        if self.chain_height is None or height > self.chain_height:
            self.chain_height = height
            self.m.chain_height.set(height)
        if self._wanted is None or height > self._wanted:
            self._wanted = height
        self._update_lag()
        self._wake.set()

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
                        self._observe(block.height, block)
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
                if self.chain_reachable or self._wanted is None:
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
                last = self.state.last_height
                if last is not None and status.height < last:
                    log.warning(
                        "the chain is below the cursor (a different or reset chain?); waiting for it",
                        extra={"height": status.height, "cursor": last},
                    )
                    self._wanted = status.height
                self.chain_height = status.height
                self.m.chain_height.set(status.height)
                self._observe(status.height)
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

    def _work_pending(self) -> bool:
        if self._wanted is None:
            return False
        last = self.state.last_height
        return self._announce_version or last is None or last < self._wanted

    async def _sync_loop(self) -> None:
        attempt = 0
        while True:
            if not self._work_pending():
                await self._wake.wait()
            self._wake.clear()
            if not self._work_pending():
                continue
            try:
                await self._step()
                attempt = 0
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
        """Publish the next height (or only the start-up version snapshot), then move the cursor."""
        assert self._wanted is not None
        height, skipped = next_height(self.state.last_height, self._wanted, self.settings.max_backfill_blocks)
        if skipped:
            self.m.blocks_skipped.inc(skipped)
            log.warning(
                "too far behind: skipping blocks",
                extra={
                    "skipped": skipped,
                    "from_height": (self.state.last_height or 0) + 1,
                    "height": height,
                },
            )
        blocks = [await self._block(height)] if height is not None else []
        at = height if height is not None else min(self._wanted, self.state.last_height or self._wanted)
        plans, version = await self._read_chain_state(at, latest=at >= self._wanted)
        announce = self._announce_version and version is not None
        step = decide(self.state, blocks, plans, version, observed_at=at, announce_version=announce)
        await self._publish(step)
        await self._save(step.state)
        if announce:
            self._announce_version = False
        for h in [h for h in self._hints if h <= (self.state.last_height or 0)]:
            del self._hints[h]

    async def _block(self, height: int) -> ObservedBlock:
        hint = self._hints.get(height)
        if hint is not None:
            return hint
        try:
            block = await self.rpc.block(height)
        except RpcError as exc:
            # The node no longer has it (pruned): the height is still a fact worth publishing.
            log.warning(
                "block unavailable; publishing its height only", extra={"height": height, "error": str(exc)}
            )
            return ObservedBlock(height)
        self.m.blocks_backfilled.inc()
        return block

    async def _read_chain_state(
        self, height: int, *, latest: bool
    ) -> tuple[list[ObservedPlan] | None, str | None]:
        """Plans and version as of block `height`; unpinned only when `height` is the newest block."""
        pin = height if height > 0 else None
        try:
            return await self.queries.partial_upgrades(pin), await self.queries.mlnode_version(pin)
        except QueryError as exc:
            if exc.code in _TRANSIENT or pin is None:
                raise
            if not latest:
                log.info(
                    "state at this height is not queryable; reading it later",
                    extra={"height": height, "error": str(exc)},
                )
                return None, None
            log.info(
                "height-pinned query refused; reading the latest state",
                extra={"height": height, "error": str(exc)},
            )
            return await self.queries.partial_upgrades(None), await self.queries.mlnode_version(None)

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
        app = FastAPI(title="chain-watcher", docs_url=None, redoc_url=None, openapi_url=None)
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
