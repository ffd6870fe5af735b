"""The version-registry at its edges: consumers in, KV state with CAS, `version.changed` out.

Every command goes through one path: read the state and its revision, decide with the pure core,
write state plus outbox with compare-and-swap, publish the outbox, clear it. A second instance
started by mistake loses CAS races and re-decides on fresh state instead of overwriting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from services.version_registry.core import (
    Command,
    Outcome,
    Rollback,
    RollbackRefused,
    apply,
)
from services.version_registry.settings import RegistrySettings
from services.version_registry.store import RegistryStore, Stored, StoredState
from shared.bus import CHAIN_STREAM, VERSION_STREAM, Bus
from shared.consumer import Delivery, DurableConsumer
from shared.events import (
    BlockCommitted,
    BrokerRefreshed,
    ChainVersionObserved,
    Event,
    UpgradeScheduled,
    VersionChanged,
)
from shared.kv_store import StaleRevisionError, VersionedStore
from shared.logging import get_logger
from shared.metrics import PREFIX, ServiceMetrics
from shared.provisioning import registry_consumers
from shared.registry_api import (
    HISTORY_SUBJECT,
    ROLLBACK_SUBJECT,
    STATE_SUBJECT,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    RegistryState,
    RollbackRequest,
)

__all__ = ["RegistryMetrics", "RegistryService"]

log = get_logger(__name__)
MAX_CAS_ATTEMPTS = 100
CHAIN = CHAIN_STREAM.name  # the stream chain facts come from; its sequences order them


class RegistryMetrics(ServiceMetrics):
    def __init__(self, service: str) -> None:
        super().__init__(service)
        r = self.registry
        self.transitions_total = Counter(
            f"{PREFIX}_registry_transitions_total", "Version switches by reason", ["reason"], registry=r
        )
        self.cas_conflicts_total = Counter(
            f"{PREFIX}_registry_cas_conflicts_total",
            "State writes refused because another writer won",
            registry=r,
        )
        self.last_height = Gauge(f"{PREFIX}_registry_last_height", "Highest block height seen", registry=r)
        self.pending_plans = Gauge(
            f"{PREFIX}_registry_pending_plans", "Plans waiting for their height", registry=r
        )
        self.current_version = Gauge(
            f"{PREFIX}_registry_current_version", "1 for the current version", ["version"], registry=r
        )
        self.handoff_pending = Gauge(
            f"{PREFIX}_registry_handoff_pending", "1 while current != last_used", registry=r
        )
        self.chain_height = Gauge(
            f"{PREFIX}_registry_chain_height", "Height of the chain's last version snapshot", registry=r
        )
        self.ahead_of_chain_total = Counter(
            f"{PREFIX}_registry_ahead_of_chain_total",
            "Chain snapshots that found the registry ahead of the chain (it stepped back to the chain)",
            registry=r,
        )


class RegistryService:
    def __init__(
        self,
        bus: Bus,
        settings: RegistrySettings,
        metrics: RegistryMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._store: RegistryStore | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.latest: Stored = Stored(StoredState(), None)

    # -- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        kv = await self.bus.bind_bucket(self.settings.bucket)  # provisioned: `mlnode-upgrade nats provision`
        self._store = RegistryStore(VersionedStore(kv))
        stored = await self.store.load()
        await self._set_latest(stored)
        if stored.state.outbox:
            log.info("publishing switches left in the outbox", extra={"count": len(stored.state.outbox)})
            async with self._lock:
                await self._flush(stored)

    @property
    def store(self) -> RegistryStore:
        if self._store is None:
            raise RuntimeError("RegistryService.start() has not run")
        return self._store

    def consumers(self) -> list[DurableConsumer]:
        specs = registry_consumers(
            self.settings.chain_durable, self.settings.broker_durable, self.settings.ack_wait_s
        )
        return [DurableConsumer(self.bus, spec, self.handle) for spec in specs]

    # -- commands ----------------------------------------------------------------------------

    async def handle(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, BlockCommitted | UpgradeScheduled | ChainVersionObserved):
            # The stream sequence orders chain facts; it survives redelivery.
            await self.submit(event, seq=delivery.stream_seq if delivery.stream == CHAIN else None)
        elif isinstance(event, BrokerRefreshed):
            await self.submit(event)

    async def submit(self, command: Command, seq: int | None = None) -> Stored:
        """Decide and persist one command; returns the stored state after it (outbox flushed).

        `seq` is a chain command's CHAIN stream sequence (None for rollbacks and broker events).
        """
        async with self._lock:
            for _ in range(MAX_CAS_ATTEMPTS):
                stored = await self.store.load()
                outcome = apply(stored.state.core, command, self.clock(), seq)
                if outcome.state == stored.state.core:
                    if stored.state.outbox:
                        stored = await self._flush(stored)
                    await self._set_latest(stored)
                    return stored
                new = StoredState(core=outcome.state, outbox=(*stored.state.outbox, *outcome.changes))
                try:
                    revision = await self.store.save(new, stored.revision)
                except StaleRevisionError:
                    self.metrics.cas_conflicts_total.inc()
                    continue
                self._report_step_back(outcome)
                for change in outcome.changes:
                    self.metrics.transitions_total.labels(reason=change.reason).inc()
                    log.info(
                        "version switch decided",
                        extra={
                            "event": VersionChanged.SUBJECT,
                            "version": change.current.raw,
                            "previous": change.previous.raw if change.previous else None,
                            "height": change.height,
                            "transition_id": change.transition_id,
                            "reason": change.reason,
                        },
                    )
                stored = await self._flush(Stored(new, revision))
                await self._set_latest(stored)
                return stored
        raise RuntimeError(f"state write lost {MAX_CAS_ATTEMPTS} compare-and-swap races in a row")

    def _report_step_back(self, outcome: Outcome) -> None:
        back = outcome.stepped_back
        if back is None:
            return
        self.metrics.ahead_of_chain_total.inc()
        log.warning(
            "registry was ahead of the chain: stepped back to the chain's snapshot",
            extra={
                "event": ChainVersionObserved.SUBJECT,
                "version": back.chain_version.raw,
                "previous": back.version_before.raw if back.version_before else None,
                "height": back.to_height,
                "from_height": back.from_height,
                "current": outcome.state.current.raw if outcome.state.current else None,
            },
        )

    async def _flush(self, stored: Stored) -> Stored:
        """Publish what the outbox owes, then clear it (CAS); safe to run from two instances."""
        while stored.state.outbox:
            for change in await self._unpublished(stored.state.outbox):
                await self.bus.publish(change, retry_for_s=30)
                log.info(
                    "version.changed published",
                    extra={
                        "event": VersionChanged.SUBJECT,
                        "version": change.current.raw,
                        "height": change.height,
                        "transition_id": change.transition_id,
                    },
                )
            cleared = StoredState(core=stored.state.core, outbox=())
            try:
                stored = Stored(cleared, await self.store.save(cleared, stored.revision))
            except StaleRevisionError:
                self.metrics.cas_conflicts_total.inc()
                stored = await self.store.load()
        return stored

    async def _unpublished(self, outbox: tuple[VersionChanged, ...]) -> tuple[VersionChanged, ...]:
        """Outbox entries after the last one already on the stream (published in order, by us only)."""
        try:
            last = await self.bus.js.get_last_msg(VERSION_STREAM.name, VersionChanged.SUBJECT)
        except nats.js.errors.NotFoundError:
            return outbox
        try:
            last_id = VersionChanged.model_validate_json(last.data or b"").transition_id
        except ValidationError:
            return outbox
        ids = [c.transition_id for c in outbox]
        if last_id in ids:
            return outbox[ids.index(last_id) + 1 :]
        return outbox

    async def rollback(self, request: RollbackRequest) -> Stored:
        """Raises RollbackRefused when it cannot apply."""
        command = Rollback(
            rollback_id=uuid.uuid4().hex[:16],
            version=request.version,
            actor=request.actor,
            reason=request.reason,
        )
        log.warning(
            "operator rollback requested",
            extra={"event": "registry.rollback", "version": request.version.raw, "actor": request.actor},
        )
        return await self.submit(command)

    # -- queries -----------------------------------------------------------------------------

    async def state(self) -> RegistryState:
        stored = await self.store.load()
        await self._set_latest(stored)
        return stored.state.core.view(stored.revision or 0)

    async def history(self, limit: int) -> HistoryReply:
        stored = await self.store.load()
        return HistoryReply(transitions=stored.state.core.history[-limit:])

    async def wait_for_change(self, revision: int, wait_s: float) -> Stored:
        """The latest state once its revision differs from `revision` (or after `wait_s`)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: (self.latest.revision or 0) != revision), wait_s
                )
            return self.latest

    async def _set_latest(self, stored: Stored) -> None:
        if (stored.revision or 0) < (self.latest.revision or 0):
            return
        self.latest = stored
        core = stored.state.core
        self.metrics.last_height.set(core.last_height)
        self.metrics.chain_height.set(core.chain_height)
        self.metrics.pending_plans.set(len(core.pending))
        self.metrics.handoff_pending.set(1 if core.view().handoff_needed else 0)
        self.metrics.current_version.clear()
        if core.current is not None:
            self.metrics.current_version.labels(version=core.current.raw).set(1)
        async with self._changed:
            self._changed.notify_all()

    async def follow_other_writers(self, interval_s: float = 0.5) -> None:
        """Keep `latest` fresh when another instance writes (for WatchState).

        A poll of the state key, not a KV watch: a watch is a push consumer, and services may not
        create consumers (a push consumer's deliver subject could be any subject). Our own writes
        update `latest` at once; another instance's show within `interval_s`.
        """
        while True:
            try:
                stored = await self.store.load()
                if stored.revision != self.latest.revision:
                    await self._set_latest(stored)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot read the registry state; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(interval_s)

    # -- NATS request-reply ------------------------------------------------------------------

    async def serve_requests(self) -> None:
        queue = "version-registry"
        await self.bus.nc.subscribe(STATE_SUBJECT, queue=queue, cb=self._on_state_request)
        await self.bus.nc.subscribe(HISTORY_SUBJECT, queue=queue, cb=self._on_history_request)
        await self.bus.nc.subscribe(ROLLBACK_SUBJECT, queue=queue, cb=self._on_rollback_request)

    async def _reply(self, msg: Msg, body: bytes) -> None:
        if msg.reply:
            await msg.respond(body)

    async def _on_state_request(self, msg: Msg) -> None:
        await self._reply(msg, (await self.state()).model_dump_json().encode())

    async def _on_history_request(self, msg: Msg) -> None:
        try:
            request = HistoryRequest.model_validate_json(msg.data or b"{}")
        except ValidationError as exc:
            await self._reply(
                msg, ErrorReply(error=f"invalid history request: {exc}").model_dump_json().encode()
            )
            return
        await self._reply(msg, (await self.history(request.limit)).model_dump_json().encode())

    async def _on_rollback_request(self, msg: Msg) -> None:
        try:
            request = RollbackRequest.model_validate_json(msg.data or b"")
            stored = await self.rollback(request)
        except ValidationError as exc:
            await self._reply(
                msg, ErrorReply(error=f"invalid rollback request: {exc}").model_dump_json().encode()
            )
            return
        except RollbackRefused as exc:
            await self._reply(msg, ErrorReply(error=str(exc)).model_dump_json().encode())
            return
        await self._reply(msg, stored.state.core.view(stored.revision or 0).model_dump_json().encode())
