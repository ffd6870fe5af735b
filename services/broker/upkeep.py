"""Upkeep between switches: bring the current version up where it does not serve, retry pending stops.

Both are idempotent and yield to a switch (`scheduler`): a round that is skipped or cancelled
simply runs again next time. A node the API node stopped, or runs PoC or training on, is left
as it is: bringing a model up there would undo what the API node asked for.
"""

from __future__ import annotations

import functools

from services.broker.handoff import Finish, HandoffPolicy
from services.broker.handoff_runner import HandoffRunner, settled_phase, work_phase
from services.broker.models import PendingStop
from services.broker.node_work import WorkKind
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import STAGING_PHASES, NodePool, SlotPhase
from services.broker.scheduler import NodeScheduler
from shared.logging import get_logger

__all__ = ["Upkeep"]

log = get_logger(__name__)


class Upkeep:
    def __init__(
        self,
        pool: NodePool,
        scheduler: NodeScheduler,
        runner: HandoffRunner,
        pending: PendingStopBook,
        *,
        bring_up_policy: HandoffPolicy,
        stop_policy: HandoffPolicy,
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.runner = runner
        self.pending = pending
        self.bring_up_policy = bring_up_policy
        self.stop_policy = stop_policy

    # -- bring up -----------------------------------------------------------------------------------

    async def bring_up_all(self) -> None:
        """Bring the current version up on every idle node that does not serve it (and re-check the rest)."""
        for node_id in list(self.pool.slots):
            self.spawn_bring_up(node_id)
        await self.scheduler.wait_upkeep()

    def spawn_bring_up(self, node_id: str) -> None:
        self.scheduler.spawn_upkeep(node_id, functools.partial(self.bring_up, node_id))

    async def bring_up(self, node_id: str) -> None:
        slot = self.pool.get(node_id)
        target = self.pool.current
        if slot is None or target is None:
            return
        if slot.phase in STAGING_PHASES:
            return  # on its way to the next version ahead of the switch: the stager's
        work = self.runner.works.get(node_id)
        if work is not None and work.kind is not WorkKind.INFERENCE:
            if slot.phase is SlotPhase.STARTING:  # after a restart: show what it does
                self.pool.mark(node_id, ready=False, phase=work_phase(work.kind), version=target)
            return  # the API node's choice: not ours to change

        async def turn() -> tuple[bool, Finish] | None:
            if self.pool.current != target:
                return None
            was_ready = slot.ready and slot.version == target
            finish = await self.runner.run(
                node_id,
                target,
                (),
                slot.config.model,
                self.bring_up_policy,
                {"version": target.raw},
                show_phases=not was_ready,
            )
            if self.pool.current != target:
                return None
            self.pool.mark(node_id, ready=finish.serving, phase=settled_phase(finish), version=target)
            return was_ready, finish

        done = await self.scheduler.upkeep_turn(node_id, turn)
        if done is None:
            return
        was_ready, finish = done
        if finish.serving != was_ready:
            log.info(
                "node serving" if finish.serving else "node not serving",
                extra={
                    "event": "node.heal",
                    "node": node_id,
                    "version": target.raw,
                    "detail": finish.outcome.detail,
                },
            )

    # -- pending stops ------------------------------------------------------------------------------

    async def retry_pending_stops(self) -> None:
        """One attempt per pending stop: stop, then confirm STOPPED; confirmed ones are dropped."""
        pending = await self.pending.due(self.pool.current, self.pool.slots.keys())
        for stop in pending.items:
            self.scheduler.spawn_upkeep(stop.node_id, functools.partial(self._retry_stop, stop))
        await self.scheduler.wait_upkeep()

    async def _retry_stop(self, stop: PendingStop) -> None:
        slot = self.pool.get(stop.node_id)
        if slot is None:
            return

        async def turn() -> Finish | None:
            if stop.version == self.pool.current:
                return None  # never stop the version that serves now
            log_fields = {"transition": stop.transition_id, "version": str(self.pool.current)}
            return await self.runner.run(
                stop.node_id, None, (stop.version,), None, self.stop_policy, log_fields, show_phases=False
            )

        finish = await self.scheduler.upkeep_turn(stop.node_id, turn)
        if finish is None:
            return
        if finish.confirmed:
            await self.pending.confirmed(stop)
            log.info(
                "pending stop confirmed",
                extra={
                    "event": "stop.pending_done",
                    "node": stop.node_id,
                    "stopped": stop.version.raw,
                    "transition": stop.transition_id,
                    "attempts": stop.attempts + 1,
                },
            )
        else:
            error = finish.unconfirmed[0].error if finish.unconfirmed else finish.outcome.detail
            await self.pending.failed_again(stop, error)
