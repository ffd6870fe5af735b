"""Carries out one switch across the nodes: decide, persist, close the gates, hand each node over.

Which switch is `transition.decide`; which call next is `handoff`; who may touch a node is
`scheduler`. This module puts them in order: the record is persisted before any node is touched,
each node's unconfirmed stops are kept before its outcome, and `broker.refreshed` follows the
last outcome (`outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from services.broker.handoff import Finish, HandoffPolicy
from services.broker.handoff_runner import HandoffRunner, settled_phase
from services.broker.metrics import BrokerMetrics
from services.broker.outcomes import SwitchLedger, switch_fields
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import STAGING_PHASES, NodePool, NodeSlot, SlotPhase
from services.broker.scheduler import NodeScheduler
from services.broker.transition import Change, NodeStops, TransitionRecord, begin, decide
from shared.events import NodeOutcome
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["SwitchRunner"]

log = get_logger(__name__)

PACED_HANDOFFS = 8  # handoffs at once after a staged switch's height

FirstWave = Callable[[MLNodeVersion, tuple[MLNodeVersion, ...]], tuple[str, ...]]


class WaveGate:
    """A rollback's first wave: the other nodes' handoffs wait until every node of it is done."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        self.nodes = frozenset(nodes)
        self._left = set(nodes)
        self._open = asyncio.Event()
        if not self._left:
            self._open.set()

    @property
    def open(self) -> bool:
        return self._open.is_set()

    def done(self, node_id: str) -> None:
        self._left.discard(node_id)
        if not self._left:
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


class SwitchRunner:
    def __init__(
        self,
        pool: NodePool,
        scheduler: NodeScheduler,
        runner: HandoffRunner,
        ledger: SwitchLedger,
        pending: PendingStopBook,
        metrics: BrokerMetrics,
        policy: HandoffPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        first_wave: FirstWave = lambda target, serving: (),
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.runner = runner
        self.ledger = ledger
        self.pending = pending
        self.metrics = metrics
        self.policy = policy
        self.clock = clock
        self.wall = wall
        self._decide_lock = asyncio.Lock()  # one decision at a time: a new switch or a resume
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._paced = asyncio.Semaphore(1)
        self.first_wave = first_wave
        self._wave: WaveGate = WaveGate(())
        self._also_stop: dict[str, MLNodeVersion] = {}  # staged for another version: stopped too

    async def apply(self, change: Change) -> None:
        async with self._decide_lock:
            verdict = decide(self.ledger.record, change)
            if verdict == "ignore":
                return
            if verdict == "resume":
                if not self.running() and self.ledger.record is not None:
                    self._launch(self.ledger.record)
                return
            await self._cancel()
            record = begin(self.ledger.record, change, tuple(self.pool.slots), self.wall())
            await self.ledger.begin(record)
            await self.pending.forget_version(change.current)
            log.info(
                "switch started",
                extra=switch_fields(
                    record,
                    event="transition.start",
                    stop=[v.raw for v in record.stop],
                    nodes=len(record.nodes),
                ),
            )
            self._launch(record)

    async def resume(self, record: TransitionRecord) -> None:
        """After a restart: carry on with the persisted switch."""
        async with self._decide_lock:
            self._launch(record)

    async def resume_unfinished(self) -> None:
        """A switch whose run ended without every outcome (a node's handoff crashed): run the rest."""
        record = self.ledger.record
        if record is not None and not record.complete and not self.running():
            await self.apply(Change(record.transition_id, record.previous, record.target, record.height))

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_idle(self) -> None:
        """For tests and shutdown: until the running switch (if any) is over."""
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _launch(self, record: TransitionRecord) -> None:
        """Close the gates now (no request reaches an old version from here on), then hand over.

        A rollback with a first wave keeps the gates of the rest open until that wave serves."""
        wave = self.first_wave(record.target, record.stop) if record.reason == "rollback" else ()
        wave = tuple(n for n in wave if n in record.remaining)
        self._wave = WaveGate(wave)
        self.pool.adopt_current(record.target)
        self.pool.set_bridge(frozenset(record.stop) if wave else frozenset())
        self._also_stop = {}
        for node_id in record.remaining:
            slot = self.pool.get(node_id)
            if slot is None:
                continue
            if slot.phase in STAGING_PHASES and slot.version is not None and slot.version != record.target:
                self._also_stop[node_id] = slot.version  # staged for a plan this switch overtakes
            if slot.phase is SlotPhase.STAGED and slot.version == record.target:
                self.pool.mark(node_id, ready=True, phase=SlotPhase.READY)  # loaded early: serves now
            elif wave and node_id not in wave and slot.ready and slot.version in record.stop:
                self.pool.note_phase(node_id, SlotPhase.QUEUED)  # serves on until the first wave does
            else:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.QUEUED, version=record.target)
        if wave:
            log.info(
                "rollback in two waves: these nodes first, the rest serve until they do",
                extra=switch_fields(record, event="transition.first_wave", nodes=list(wave)),
            )
        self._started = self.clock()
        staged = sum(
            1
            for n in record.remaining
            if (slot := self.pool.get(n)) is not None and slot.ready and slot.version == record.target
        )
        # With the new version's capacity staged already, the rest need not all move at once.
        self._paced = asyncio.Semaphore(PACED_HANDOFFS if staged else max(len(record.remaining), 1))
        tasks = self.scheduler.claim_for_switch(record.remaining, lambda n: self._run_node(record, n))
        self._task = asyncio.create_task(self._run(record, tasks))

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    async def _run(self, record: TransitionRecord, tasks: dict[str, asyncio.Task[None]]) -> None:
        try:
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for task in tasks.values():
                task.cancel()
            self.scheduler.release_switch()
        for node_id, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error(
                    "node handoff crashed",
                    exc_info=result,
                    extra=switch_fields(record, event="handoff.error", node=node_id),
                )
        current = self.ledger.record
        if current is not None and current.transition_id == record.transition_id and current.complete:
            elapsed = self.clock() - self._started
            self.metrics.transition_seconds.observe(elapsed)
            counts: dict[str, int] = {}
            for outcome in current.outcomes.values():
                counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
            log.info(
                "switch finished",
                extra=switch_fields(
                    current, event="transition.done", seconds=round(elapsed, 3), outcomes=counts
                ),
            )
            await self.ledger.publish_refreshed()

    async def _run_node(self, record: TransitionRecord, node_id: str) -> None:
        slot = self.pool.get(node_id)
        if slot is None:
            self._wave.done(node_id)
            await self.ledger.record_outcome(record, NodeOutcome(node_id=node_id, outcome="removed"))
            return
        started = self.clock()
        if node_id not in self._wave.nodes:
            await self._wave.wait()
        try:
            finish = await self._hand_over(record, node_id, slot)
        finally:
            self._wave.done(node_id)
            if self._wave.open:
                self.pool.set_bridge(frozenset())
        self.metrics.node_handoff_seconds.observe(self.clock() - started)
        if finish.work is not None:
            carried = "true" if finish.carried else "false"
            self.metrics.work_carried_total.labels(work=finish.work, carried=carried).inc()
        await self.pending.settle(
            node_id, record.transition_id, finish, lambda: self.pool.current, switch_fields(record)
        )
        await self.ledger.record_outcome(
            record, finish.outcome, NodeStops(calls=finish.stop_calls, seconds=finish.stop_s)
        )

    async def _hand_over(self, record: TransitionRecord, node_id: str, slot: NodeSlot) -> Finish:
        stop = record.stop
        if (also := self._also_stop.get(node_id)) is not None and also not in stop:
            stop = (*stop, also)
        async with self.scheduler.switch_turn(node_id):
            if slot.phase is SlotPhase.STAGED and slot.version == record.target:
                # Its early load was under way at the height and finished in the turn before this.
                self.pool.mark(node_id, ready=True, phase=SlotPhase.READY)
            if slot.ready and slot.version == record.target:
                # Loaded early, its old version stopped and confirmed then, and serving since: no
                # call is owed to it at the height (a thousand of them would slow every request).
                outcome = NodeOutcome(node_id=node_id, outcome="ready", work="inference", carried=True)
                finish = Finish(outcome, serving=True, confirmed=record.stop, unconfirmed=())
            else:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.DRAIN, version=record.target)
                async with self._paced:
                    log.info(
                        "handoff started", extra=switch_fields(record, event="handoff.start", node=node_id)
                    )
                    finish = await self.runner.run(
                        node_id,
                        record.target,
                        stop,
                        slot.config.model,
                        self.policy,
                        switch_fields(record),
                    )
                self.pool.mark(node_id, ready=finish.serving, phase=settled_phase(finish))
        return finish
