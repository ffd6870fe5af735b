"""Carries out the staged switch: each round, plan (`staging.plan`), decide (`staging.next_step`), act.

Staging a node: it stops taking old-version work at once (not ready, shown `staging`, its slot on
the target, which the routing never picks before the target is current), then, in the node's
upkeep turn, the usual handoff moves it: drain, stop the old version, bring the target up, wait
until it serves. It then waits, shown `staged`, for the height. A node whose early load fails is
handed back to the current version before the height. Handing back is the same handoff in the
other direction, and a node leaves the persisted record only once it is back, so a restart (or a
skipped turn) tries again. At the switch a staged node serves at once (`SwitchRunner`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from services.broker.handoff import HandoffPolicy
from services.broker.handoff_runner import HandoffRunner
from services.broker.load_times import LoadTimeBook
from services.broker.node_work import WorkKind
from services.broker.pool import STAGING_PHASES, NodePool, NodeSlot, SlotPhase
from services.broker.ports import RegistryReader
from services.broker.probing import ReadinessProber
from services.broker.readiness import next_plan
from services.broker.scheduler import NodeScheduler
from services.broker.staging import (
    Candidate,
    Done,
    Hold,
    Stage,
    Staged,
    StagedDocument,
    StagingPlan,
    StagingPolicy,
    Unstage,
    first_wave,
    next_step,
    plan,
)
from services.broker.work_book import WorkBook
from shared.events import StagingView
from shared.kv_document import Document
from shared.logging import get_logger
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

__all__ = ["Stager"]

log = get_logger(__name__)


class Stager:
    def __init__(
        self,
        pool: NodePool,
        scheduler: NodeScheduler,
        runner: HandoffRunner,
        works: WorkBook,
        load_times: LoadTimeBook,
        registry: RegistryReader,
        prober: ReadinessProber,
        doc: Document[StagedDocument],
        policy: StagingPolicy,
        handoff_policy: HandoffPolicy,
        default_block_time_s: float,
        switching: Callable[[], bool] = lambda: False,
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.runner = runner
        self.works = works
        self.load_times = load_times
        self.registry = registry
        self.prober = prober
        self.doc = doc
        self.policy = policy
        self.handoff_policy = handoff_policy
        self.default_block_time_s = default_block_time_s
        self.switching = switching  # a switch runs: it owns the nodes, staging waits for it
        self.staged: Staged | None = None
        self.planned: StagingPlan | None = None

    async def load(self) -> None:
        """After a restart: the staged nodes are the stager's again before any upkeep looks at them."""
        self.staged = (await self.doc.load()).staged
        if self.staged is not None:
            for node_id in self.staged.nodes:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.STAGING, version=self.staged.target)

    def is_staged(self, node_id: str) -> bool:
        return self.staged is not None and node_id in self.staged.nodes

    # -- the round -----------------------------------------------------------------------------------

    async def round(self) -> StagingView | None:
        """Plan, decide and act for the next plan; the plan as `broker.readiness` shows it."""
        state = await self.registry.state()
        if state is None:
            return None
        self.planned = self._plan(state)
        if self.switching():
            return self.view()
        if self.staged is not None and not all(s.judged for s in self.pool.slots.values()):
            # After a restart, before upkeep has judged every node: the plan cannot be judged yet
            # (a node still serving the old version is not counted while its first check runs,
            # and that check shows its steps as phases), so keep what was staged.
            self._resume()
            return self.view()
        step = next_step(self.staged, self.planned, self.pool.current, state.last_height)
        match step:
            case Stage():
                await self._stage(step)
            case Unstage():
                await self._unstage(step)
            case Done():
                self._left_behind()
                await self._save(None)
            case Hold():
                self._resume()  # after a restart, or a turn that was skipped
        return self.view()

    def _left_behind(self) -> None:
        """After a switch to another version than the staged one: a node still shown staged (the
        broker restarted after the switch took it) is marked failed, for the heal to look at."""
        current = self.pool.current
        if self.staged is None or current is None or current == self.staged.target:
            return
        for node_id in self.staged.nodes:
            slot = self.pool.get(node_id)
            if slot is not None and slot.phase in STAGING_PHASES:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.FAILED, version=current)

    def view(self) -> StagingView | None:
        p = self.planned
        if p is None:
            return None
        staged = self.staged.nodes if self.staged is not None and self.staged.target == p.target else ()
        return StagingView(
            early=p.early,
            staged=tuple(n for n in staged if (slot := self.pool.get(n)) and slot.phase is SlotPhase.STAGED),
            start_height=p.start_height if p.staged else None,
            lead_s=p.lead_s,
            old_capacity=p.old_capacity,
            new_capacity=p.new_capacity,
            why_not=p.why_not,
        )

    def _plan(self, state: RegistryState) -> StagingPlan | None:
        upcoming = next_plan(state)
        current = self.pool.current
        if upcoming is None or current is None:
            return None
        readiness = self.prober.readiness
        ready = (
            {n.node_id for n in readiness.nodes if n.ready}
            if readiness is not None and readiness.target_version == upcoming.node_version
            else set()
        )
        staged = set(self.staged.nodes) if self.staged is not None else set()
        candidates = self._candidates(
            lambda node_id, slot: (slot.ready and slot.version == current) or node_id in staged,
            lambda node_id: node_id in ready or node_id in staged,
        )
        target = upcoming.node_version
        block_time = state.block_time_s or self.default_block_time_s
        return plan(candidates, target, upcoming.height, self._loads(target), block_time, self.policy)

    def first_wave(self, target: MLNodeVersion, serving: tuple[MLNodeVersion, ...]) -> tuple[str, ...]:
        """A rollback to `target`: the nodes that move first while the rest keep serving (the ones
        serving one of `serving`, the versions rolled back from, are candidates)."""
        candidates = self._candidates(
            lambda _, slot: slot.ready and slot.version in serving,
            lambda _: True,  # it served before: the handoff finds out otherwise
        )
        return first_wave(candidates, target, self._loads(target), self.policy)

    def _candidates(
        self, serving: Callable[[str, NodeSlot], bool], target_ready: Callable[[str], bool]
    ) -> list[Candidate]:
        candidates = []
        for node_id, slot in self.pool.slots.items():
            work = self.works.get(node_id)
            candidates.append(
                Candidate(
                    node_id,
                    slot.config.max_concurrent,
                    serving_current=serving(node_id, slot),
                    target_ready=target_ready(node_id),
                    serving_work=work is None or work.kind is WorkKind.INFERENCE,
                )
            )
        return candidates

    def _loads(self, target: MLNodeVersion) -> dict[tuple[str, MLNodeVersion], float]:
        return {
            (node_id, target): seconds
            for node_id in self.pool.slots
            if (seconds := self.load_times.times.expected(node_id, target)) is not None
        }

    # -- staging and handing back --------------------------------------------------------------------

    async def _save(self, staged: Staged | None) -> None:
        self.staged = staged
        await self.doc.mutate(lambda _: StagedDocument(staged=staged))

    def _fields(self, staged: Staged, **more: Any) -> dict[str, Any]:
        return {"version": staged.target.raw, "height": staged.height, **more}

    async def _stage(self, step: Stage) -> None:
        staged = Staged(target=step.target, height=step.height, nodes=step.nodes, source=self.pool.current)
        await self._save(staged)
        for node_id in step.nodes:  # no more old-version work for them, from now on
            self.pool.mark(node_id, ready=False, phase=SlotPhase.STAGING, version=step.target)
        log.info(
            "staging nodes ahead of the switch",
            extra=self._fields(staged, event="staging.start", nodes=list(step.nodes)),
        )
        self._resume()

    def _resume(self) -> None:
        """Start (or restart) the handoff of every staged node not staged yet."""
        staged = self.staged
        current = self.pool.current
        if staged is None or current is None:
            return
        for node_id in staged.nodes:
            slot = self.pool.get(node_id)
            if slot is not None and slot.phase is not SlotPhase.STAGED:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.STAGING, version=staged.target)
                work = functools.partial(self._stage_node, staged, node_id, current)
                # The switch at the height lets an early load under way finish, then serves it: a
                # cancelled one would stop the old version a second time.
                self.scheduler.spawn_upkeep(node_id, work, keep_on_switch=True)

    async def _stage_node(self, staged: Staged, node_id: str, current: MLNodeVersion) -> None:
        slot = self.pool.get(node_id)
        if slot is None:
            return
        model = slot.config.model

        async def turn() -> bool:
            finish = await self.runner.run(
                node_id, staged.target, (current,), model, self.handoff_policy, self._fields(staged)
            )
            if finish.serving:
                self.pool.mark(node_id, ready=False, phase=SlotPhase.STAGED, version=staged.target)
                return True
            if self.pool.current == staged.target:  # the height came during the load: the switch
                return False  # hands the node over from here, in the turn after this one
            log.warning(
                "early load failed; the node goes back to the current version",
                extra=self._fields(
                    staged, event="staging.failed", node=node_id, detail=finish.outcome.detail
                ),
            )
            await self._back(node_id, staged.target, current)
            return False

        if await self.scheduler.upkeep_turn(node_id, turn) is False and self.staged is not None:
            await self._save(self.staged.without(node_id))

    async def release(self, node_id: str) -> None:
        """The API node gives a staged node other work before the height (a stop, PoC, a model):
        its call wins. The target is stopped and the node leaves the staging, its slot back on the
        current version (which staging stopped), for the call to set its work there. The caller
        holds the node's turn. The record keeps the plan, so the node is not staged again for it."""
        staged, current = self.staged, self.pool.current
        slot = self.pool.get(node_id)
        if staged is None or node_id not in staged.nodes or current is None or slot is None:
            return
        fields = self._fields(staged, node=node_id)
        log.info(
            "the API node set a staged node's work; it leaves the staging",
            extra={**fields, "event": "staging.release"},
        )
        await self.runner.run(node_id, None, (staged.target,), slot.config.model, self.handoff_policy, fields)
        self.pool.mark(node_id, ready=False, phase=SlotPhase.STOPPED, version=current)
        await self._save(staged.without(node_id))

    async def _unstage(self, step: Unstage) -> None:
        staged = self.staged
        if staged is None:
            return
        if not step.nodes:  # every early node was released to the API node's work already
            await self._save(None)
            return
        log.info(
            "staging called off; the nodes go back",
            extra=self._fields(staged, event="staging.cancel", nodes=list(step.nodes), reason=step.reason),
        )
        for node_id in step.nodes:
            self.scheduler.spawn_upkeep(
                node_id, functools.partial(self._back_in_turn, node_id, staged.target, step.back_to)
            )

    async def _back_in_turn(self, node_id: str, target: MLNodeVersion, back_to: MLNodeVersion) -> None:
        async def turn() -> bool:
            return await self._back(node_id, target, back_to)

        if await self.scheduler.upkeep_turn(node_id, turn) and self.staged is not None:
            rest = self.staged.without(node_id)
            await self._save(rest if rest.nodes else None)

    async def _back(self, node_id: str, target: MLNodeVersion, back_to: MLNodeVersion) -> bool:
        """Hand a staged node back to `back_to` (stopping `target`); True when it serves again."""
        slot = self.pool.get(node_id)
        if slot is None:
            return True
        finish = await self.runner.run(
            node_id, back_to, (target,), slot.config.model, self.handoff_policy, {"version": back_to.raw}
        )
        phase = SlotPhase.READY if finish.serving else SlotPhase.FAILED
        self.pool.mark(node_id, ready=finish.serving, phase=phase, version=back_to)
        return finish.serving
