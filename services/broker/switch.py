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

from services.broker.handoff import HandoffPolicy
from services.broker.handoff_runner import HandoffRunner, settled_phase
from services.broker.metrics import BrokerMetrics
from services.broker.outcomes import SwitchLedger, switch_fields
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import NodePool, SlotPhase
from services.broker.scheduler import NodeScheduler
from services.broker.transition import Change, TransitionRecord, begin, decide
from shared.events import NodeOutcome
from shared.logging import get_logger

__all__ = ["SwitchRunner"]

log = get_logger(__name__)


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
        """Close the gates now (no request reaches an old version from here on), then hand over."""
        self.pool.adopt_current(record.target)
        for node_id in record.remaining:
            self.pool.mark(node_id, ready=False, phase=SlotPhase.QUEUED, version=record.target)
        self._started = self.clock()
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
            await self.ledger.record_outcome(record, NodeOutcome(node_id=node_id, outcome="removed"))
            return
        started = self.clock()
        async with self.scheduler.switch_turn(node_id):
            self.pool.mark(node_id, ready=False, phase=SlotPhase.DRAIN, version=record.target)
            log.info("handoff started", extra=switch_fields(record, event="handoff.start", node=node_id))
            finish = await self.runner.run(
                node_id, record.target, record.stop, slot.config.model, self.policy, switch_fields(record)
            )
            self.pool.mark(node_id, ready=finish.serving, phase=settled_phase(finish))
        self.metrics.node_handoff_seconds.observe(self.clock() - started)
        if finish.work is not None:
            carried = "true" if finish.carried else "false"
            self.metrics.work_carried_total.labels(work=finish.work, carried=carried).inc()
        await self.pending.settle(
            node_id, record.transition_id, finish, lambda: self.pool.current, switch_fields(record)
        )
        await self.ledger.record_outcome(record, finish.outcome)
