"""The version-registry's logic behind its ports: commands in, state with CAS, outbox out.

Every command goes through one path: read the state, decide with the pure core, write state plus
outbox with compare-and-swap, publish the outbox, clear it. A second instance started by mistake
loses CAS races and re-decides on fresh state instead of overwriting it (`KvDocument.mutate`
decides again; each conflict is counted in `cas_conflicts_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from services.version_registry.core import Command, CoreState, Outcome, Rollback, apply
from services.version_registry.metrics import RegistryMetrics
from services.version_registry.ports import ChangeLog, StateDocument, TransitionLogDocument
from services.version_registry.store import Stored, StoredState, TransitionLog
from shared.bus import CHAIN_STREAM
from shared.consumer import Delivery
from shared.events import (
    BlockCommitted,
    BrokerRefreshed,
    ChainVersionObserved,
    Event,
    UpgradeScheduled,
    VersionChanged,
)
from shared.kv_document import MemoryDocument
from shared.logging import get_logger
from shared.registry_api import HistoryReply, RegistryState, RollbackRequest, Transition

__all__ = ["RegistryService"]

log = get_logger("services.version_registry.service")  # the logger name operators filter on
CHAIN = CHAIN_STREAM.name  # the stream chain facts come from; its sequences order them


class _OutboxMoved(Exception):
    """Another writer changed the outbox after it was published: publish the new one first."""


class RegistryService:
    """The single writer of version state, ready once `resume` ran (the composition root does)."""

    def __init__(
        self,
        document: StateDocument,
        changes: ChangeLog,
        metrics: RegistryMetrics,
        latest: Stored,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        transitions: TransitionLogDocument | None = None,
    ) -> None:
        self.document = document
        self.transitions: TransitionLogDocument = transitions or MemoryDocument(TransitionLog())
        self.changes = changes
        self.metrics = metrics
        self.clock = clock
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.latest = latest

    async def resume(self) -> None:
        """Report the loaded state, and publish what a crash left in the outbox."""
        stored = self.latest
        await self._set_latest(stored)
        if stored.state.outbox:
            log.info("publishing switches left in the outbox", extra={"count": len(stored.state.outbox)})
            async with self._lock:
                await self._flush(stored)

    async def _load(self) -> Stored:
        state = await self.document.load()
        return Stored(state, self.document.revision)

    # -- commands ----------------------------------------------------------------------------

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """A consumed event: chain facts and the broker's refreshes are commands."""
        await self.handle_batch([(event, delivery)])

    async def handle_batch(self, items: Sequence[tuple[Event, Delivery]]) -> None:
        """Consumed events in stream order, decided together and written once.

        A registry catching up on thousands of queued blocks pays one state write per fetched
        batch instead of one per block.
        """
        commands: list[tuple[Command, int | None]] = []
        for event, delivery in items:
            if isinstance(event, BlockCommitted | UpgradeScheduled | ChainVersionObserved):
                # The stream sequence orders chain facts; it survives redelivery.
                commands.append((event, delivery.stream_seq if delivery.stream == CHAIN else None))
            elif isinstance(event, BrokerRefreshed):
                commands.append((event, None))
        if commands:
            await self.submit_all(commands)

    async def submit(self, command: Command, seq: int | None = None) -> Stored:
        """Decide and persist one command; returns the stored state after it (outbox flushed).

        `seq` is a chain command's CHAIN stream sequence (None for rollbacks and broker events).
        """
        return await self.submit_all([(command, seq)])

    async def submit_all(self, commands: Sequence[tuple[Command, int | None]]) -> Stored:
        """Decide the commands in order on the newest state and persist the result in one write."""
        async with self._lock:
            await self.document.load()  # decide on the newest state, not on the last one seen
            written: list[Outcome] = []  # the outcomes of the decisions that were written
            made: list[Transition] = []  # their switches, for the transition log (the state trims)

            def decide(current: StoredState) -> StoredState:
                written.clear()
                made.clear()
                core, outbox = current.core, current.outbox
                now = self.clock()
                for command, seq in commands:
                    outcome = apply(core, command, now, seq)
                    if outcome.changes or outcome.stepped_back is not None:
                        written.append(outcome)
                        made.extend(outcome.made)
                    core = outcome.state
                    outbox = (*outbox, *outcome.changes)
                if core == current.core:
                    written.clear()
                    return current
                return StoredState(core=core, outbox=outbox)

            stored = Stored(await self.document.mutate(decide), self.document.revision)
            decided = tuple(change for outcome in written for change in outcome.changes)
            for outcome in written:
                self._report_decided(outcome)
            if stored.state.outbox:
                stored = await self._flush(stored, decided, tuple(made))
            await self._set_latest(stored)
            return stored

    def _report_decided(self, outcome: Outcome) -> None:
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

    async def _flush(
        self, stored: Stored, decided: tuple[VersionChanged, ...] = (), made: tuple[Transition, ...] = ()
    ) -> Stored:
        """Publish what the outbox owes, then clear it (CAS); safe to run from two instances.

        An outbox holding only the switches this call just `decided` cannot have been published
        yet, so the stream is not asked for its last entry first (one round trip less between
        the block and `version.changed`); a second publish would be a duplicate by its id anyway.
        """
        while stored.state.outbox:
            published = stored.state.outbox
            due = published if published == decided else await self._unpublished(published)
            for change in due:
                await self.changes.publish(change)
                log.info(
                    "version.changed published",
                    extra={
                        "event": VersionChanged.SUBJECT,
                        "version": change.current.raw,
                        "height": change.height,
                        "transition_id": change.transition_id,
                    },
                )

            await self._log_transitions(stored.state.core, published, made)

            def clear(current: StoredState, published: tuple[VersionChanged, ...] = published) -> StoredState:
                if current.outbox != published:
                    raise _OutboxMoved
                return StoredState(core=current.core, outbox=())

            try:
                stored = Stored(await self.document.mutate(clear), self.document.revision)
            except _OutboxMoved:
                stored = await self._load()
        return stored

    async def _log_transitions(
        self, core: CoreState, published: tuple[VersionChanged, ...], made: tuple[Transition, ...]
    ) -> None:
        """The published switches into the transition log, before the outbox is cleared.

        They are found among the switches this call `made` (more than the state keeps, in a long
        catch-up) and the state's history (an outbox left by a crash). A crash before the clear
        leaves the outbox, so the next start logs them, once (by id). The first write seeds the
        log with the state's history, so a state from before the log keeps its switches in order.
        """
        known = {t.transition_id: t for t in (*core.history, *made)}
        new = tuple(known[c.transition_id] for c in published if c.transition_id in known)
        if not new:
            return

        def append(log: TransitionLog) -> TransitionLog:
            return (
                log.with_transitions(new) if log.transitions else log.with_transitions((*core.history, *new))
            )

        await self.transitions.mutate(append)

    async def _unpublished(self, outbox: tuple[VersionChanged, ...]) -> tuple[VersionChanged, ...]:
        """Outbox entries after the last one already on the stream (published in order, by us only)."""
        last = await self.changes.last_published()
        if last is None:
            return outbox
        try:
            last_id = VersionChanged.model_validate_json(last).transition_id
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
        stored = await self._load()
        await self._set_latest(stored)
        return stored.state.core.view(stored.revision or 0)

    async def history(self, limit: int) -> HistoryReply:
        stored = await self._load()
        log = await self.transitions.load()
        return HistoryReply(transitions=log.merged(stored.state.core.history)[-limit:])

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
        self.metrics.show_next_plan(core.pending, core.last_height)
        self.metrics.show_last_used(core.last_used)
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
                stored = await self._load()
                if stored.revision != self.latest.revision:
                    await self._set_latest(stored)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot read the registry state; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(interval_s)
