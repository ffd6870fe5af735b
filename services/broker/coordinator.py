"""Runs switches: turns a `Change` into a persisted transition and drives every node's handoff.

The decisions are in `transition.py` (which switch), `handoff.py` (which call next) and
`routing.py` (which node); this module executes them against the ports and keeps the KV record
up to date, in the order that makes a crash at any point safe:

1. the transition record (target, versions to stop, nodes) is written before any node is touched;
2. a stop that could not be confirmed is written as a pending stop before the node's outcome;
3. the outcome is written before `broker.refreshed`, which is published once all nodes have one
   and then marked as published (its Nats-Msg-Id makes a second publish a duplicate anyway).

Besides switches it does the upkeep the periodic reconcile asks for: follow the registry, bring
up nodes that are not serving the current version, retry pending stops, probe readiness for the
next plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.broker import handoff as hf
from services.broker.handoff import Finish, Handoff, HandoffPolicy, Phase
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import MLNodeCallError
from services.broker.models import NodeConfig, NodeSet, PendingStop, PendingStops
from services.broker.node_store import BrokerStore
from services.broker.pool import NodePool
from services.broker.ports import Gateway, Publisher, RegistryReader
from services.broker.readiness import Probe, next_plan, report
from services.broker.transition import (
    Change,
    TransitionRecord,
    begin,
    change_from_event,
    change_from_registry,
    decide,
)
from shared.events import BrokerReadiness, NodeOutcome, VersionChanged
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["Coordinator", "NodeExists", "NodeMissing", "Policies"]

log = get_logger(__name__)


class NodeExists(ValueError):
    pass


class NodeMissing(KeyError):
    pass


@dataclass(frozen=True, slots=True)
class Policies:
    """Bounds for the three kinds of node work."""

    handoff: HandoffPolicy = field(default_factory=HandoffPolicy)
    # A pending stop is tried once per round; the round repeats until it is confirmed.
    pending: HandoffPolicy = field(default_factory=lambda: HandoffPolicy(stop_attempts=1))
    # Upkeep: bring the current version up where it is not serving.
    heal: HandoffPolicy = field(default_factory=HandoffPolicy)


def _ctx(record: TransitionRecord | None, **extra: Any) -> dict[str, Any]:
    """The fields every log line about a switch carries."""
    if record is None:
        return extra
    return {
        "transition": record.transition_id,
        "version": record.target.raw,
        "previous": record.previous.raw if record.previous else None,
        "height": record.height,
        **extra,
    }


class Coordinator:
    def __init__(
        self,
        store: BrokerStore,
        gateway: Gateway,
        pool: NodePool,
        publisher: Publisher,
        registry: RegistryReader,
        metrics: BrokerMetrics,
        policies: Policies | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.pool = pool
        self.publisher = publisher
        self.registry = registry
        self.metrics = metrics
        self.policies = policies or Policies()
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.record: TransitionRecord | None = None
        self.readiness: BrokerReadiness | None = None
        self._published_readiness: BrokerReadiness | None = None
        self._decide_lock = asyncio.Lock()
        self._transition_task: asyncio.Task[None] | None = None
        self._node_tasks: dict[str, asyncio.Task[None]] = {}
        self._upkeep: dict[str, asyncio.Task[None]] = {}
        self._transition_started = 0.0

    # -- start-up --------------------------------------------------------------------------------

    async def start(self, seed: tuple[NodeConfig, ...]) -> None:
        """Load nodes (the config file seeds the KV once), then resume an unfinished switch."""
        nodes = await self.store.nodes.mutate(lambda s: s if s.seeded else NodeSet(seeded=True, nodes=seed))
        for node in nodes.nodes:
            self.pool.upsert(node)
        self.metrics.pending_stops.set(len((await self.store.pending.load()).items))
        self.record = await self.store.transition.load()
        record = self.record
        if record is None:
            return
        self._set_current(record.target)
        if not record.complete:
            log.info(
                "resuming switch after restart",
                extra=_ctx(record, event="transition.resume", remaining=len(record.remaining)),
            )
            async with self._decide_lock:
                self._launch(record)
        elif record.needs_publish:
            await self.publish_refreshed()

    def _set_current(self, version: MLNodeVersion) -> None:
        if self.pool.current != version:
            self.pool.set_current(version)
        for slot in self.pool.slots.values():
            if slot.version is None:
                slot.version = version

    # -- triggers ----------------------------------------------------------------------------------

    async def on_version_changed(self, event: VersionChanged) -> None:
        """A `version.changed`: act on it, unless the registry already moved past it (a replay)."""
        change = change_from_event(event)
        state = await self.registry.state()
        if state is not None and state.current_transition not in (None, event.transition_id):
            followed = change_from_registry(state, self.record)
            log.info(
                "version.changed is not the registry's current switch; following the registry",
                extra={
                    "event": "version.changed",
                    "transition": event.transition_id,
                    "version": event.current.raw,
                    "height": event.height,
                    "registry_transition": state.current_transition,
                },
            )
            if followed is None:
                return
            change = followed
        await self.apply(change)

    async def sync(self) -> None:
        """Follow the registry: start-up and every reconcile (current != last_used → hand over)."""
        state = await self.registry.state()
        if state is None:
            return
        change = change_from_registry(state, self.record)
        if change is not None:
            await self.apply(change)
        elif state.current_version is not None and self.pool.current is None:
            self._set_current(state.current_version)

    async def apply(self, change: Change) -> None:
        async with self._decide_lock:
            verdict = decide(self.record, change)
            if verdict == "ignore":
                return
            if verdict == "resume":
                if self._transition_task is None or self._transition_task.done():
                    assert self.record is not None
                    self._launch(self.record)
                return
            await self._cancel_transition()
            record = begin(self.record, change, tuple(self.pool.slots), self.wall())
            # Persisted before any node is touched: a restart resumes exactly this switch.
            self.record = await self.store.transition.mutate(lambda _: record)
            pending = await self.store.pending.mutate(lambda p: p.forget_version(change.current))
            self.metrics.pending_stops.set(len(pending.items))
            log.info(
                "switch started",
                extra=_ctx(
                    record,
                    event="transition.start",
                    stop=[v.raw for v in record.stop],
                    nodes=len(record.nodes),
                ),
            )
            self._launch(record)

    # -- running a switch ----------------------------------------------------------------------

    def _launch(self, record: TransitionRecord) -> None:
        """Close the gates now (no request reaches an old version from here on), then hand over."""
        self._set_current(record.target)
        for task in self._upkeep.values():
            task.cancel()  # upkeep is idempotent and runs again later; the switch goes first
        for node_id in record.remaining:
            self.pool.mark(node_id, ready=False, phase="queued", version=record.target)
        self._transition_started = self.clock()
        # Created here, synchronously, so upkeep never slips in between the decision and the handoff.
        self._node_tasks = {n: asyncio.create_task(self._run_node(record, n)) for n in record.remaining}
        self._transition_task = asyncio.create_task(self._run_transition(record, dict(self._node_tasks)))

    async def _cancel_transition(self) -> None:
        task = self._transition_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._transition_task = None

    async def _run_transition(self, record: TransitionRecord, tasks: dict[str, asyncio.Task[None]]) -> None:
        try:
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for task in tasks.values():
                task.cancel()
            self._node_tasks = {}
        for node_id, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error(
                    "node handoff crashed",
                    exc_info=result,
                    extra=_ctx(record, event="handoff.error", node=node_id),
                )
        current = self.record
        if current is not None and current.transition_id == record.transition_id and current.complete:
            elapsed = self.clock() - self._transition_started
            self.metrics.transition_seconds.observe(elapsed)
            counts: dict[str, int] = {}
            for outcome in current.outcomes.values():
                counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
            log.info(
                "switch finished",
                extra=_ctx(current, event="transition.done", seconds=round(elapsed, 3), outcomes=counts),
            )
            await self.publish_refreshed()

    async def _run_node(self, record: TransitionRecord, node_id: str) -> None:
        slot = self.pool.slots.get(node_id)
        if slot is None:
            await self._record_outcome(record, NodeOutcome(node_id=node_id, outcome="removed"))
            return
        started = self.clock()
        async with slot.lock:
            self.pool.mark(node_id, ready=False, phase=Phase.DRAIN.value, version=record.target)
            log.info("handoff started", extra=_ctx(record, event="handoff.start", node=node_id))
            h, cmd = hf.start(
                node_id, record.target, record.stop, slot.config.model, self.policies.handoff, self.clock()
            )
            finish = await self._drive(h, cmd, _ctx(record))
            self.pool.mark(node_id, ready=finish.serving, phase="ready" if finish.serving else "failed")
        self.metrics.node_handoff_seconds.observe(self.clock() - started)
        await self._settle_stops(node_id, record.transition_id, finish, record)
        await self._record_outcome(record, finish.outcome)

    async def _drive(self, h: Handoff, cmd: hf.Command, ctx: dict[str, Any]) -> Finish:
        """Execute commands and feed the answers back until the machine finishes."""
        while not isinstance(cmd, Finish):
            slot = self.pool.slots.get(h.node_id)
            if slot is None:  # removed under us: nothing more to do on it
                outcome = NodeOutcome(node_id=h.node_id, outcome="removed")
                return Finish(outcome, serving=False, confirmed=h.confirmed, unconfirmed=())
            slot.phase = h.phase.value
            if h.phase is Phase.BRING_UP and slot.ready:
                self.pool.mark(h.node_id, ready=False, phase=h.phase.value)  # it does not serve now
            obs = await self._execute(slot.config, cmd)
            if isinstance(obs, hf.Failed) and isinstance(cmd, hf.SendStop | hf.BringUp | hf.ReadState):
                log.warning(
                    "MLNode call failed",
                    extra={
                        **ctx,
                        "event": "handoff.call_failed",
                        "node": h.node_id,
                        "command": type(cmd).__name__,
                        "error": obs.error,
                        "status": obs.status,
                    },
                )
            confirmed = len(h.confirmed)
            h, cmd = hf.advance(h, obs, self.clock())
            for version in h.confirmed[confirmed:]:
                log.info(
                    "old version stopped (confirmed STOPPED)",
                    extra={**ctx, "event": "stop.confirmed", "node": h.node_id, "stopped": version.raw},
                )
        return cmd

    async def _execute(self, node: NodeConfig, cmd: hf.Command) -> hf.Observation:
        try:
            match cmd:
                case hf.Drain(versions, timeout_s):
                    return hf.Drained(await self.pool.wait_drained(node.id, versions, timeout_s))
                case hf.Wait(seconds):
                    await self.sleep(seconds)
                    return hf.Woke()
                case hf.SendStop(version):
                    await self.gateway.stop(node, version)
                    return hf.Ok()
                case hf.ReadState(version):
                    return hf.StateIs(await self.gateway.state(node, version))
                case hf.BringUp(version, model, args):
                    await self.gateway.inference_up(node, version, model, args)
                    return hf.Ok()
                case hf.CheckHealth(version):
                    await self.gateway.serving(node, version)
                    return hf.Ok()
        except MLNodeCallError as exc:
            return hf.Failed(str(exc), exc.status)
        raise ValueError(f"no executor for {cmd!r}")

    async def _settle_stops(
        self, node_id: str, transition_id: str, finish: Finish, record: TransitionRecord | None
    ) -> None:
        """Confirmed stops clear their pending entry; unconfirmed ones become (or stay) pending."""
        if not finish.confirmed and not finish.unconfirmed:
            return
        now = self.wall()

        def update(pending: PendingStops) -> PendingStops:
            for version in finish.confirmed:
                pending = pending.remove(node_id, version)
            for version, error in finish.unconfirmed:
                if version == self.pool.current:
                    continue  # never keep a stop for the version that serves now
                pending = pending.add(
                    PendingStop(
                        node_id=node_id,
                        version=version,
                        transition_id=transition_id,
                        attempts=1,
                        last_error=error,
                        since=now,
                    )
                )
            return pending

        pending = await self.store.pending.mutate(update)
        self.metrics.pending_stops.set(len(pending.items))
        self.metrics.stops_confirmed_total.inc(len(finish.confirmed))
        for version, error in finish.unconfirmed:
            self.metrics.stop_failures_total.inc()
            log.warning(
                "stop not confirmed; kept as a pending stop",
                extra=_ctx(record, event="stop.pending", node=node_id, stopped=version.raw, error=error),
            )

    async def _record_outcome(self, record: TransitionRecord, outcome: NodeOutcome) -> None:
        tid = record.transition_id
        now = self.wall()

        def update(current: TransitionRecord | None) -> TransitionRecord | None:
            if current is None or current.transition_id != tid:
                return current  # superseded meanwhile
            return current.with_outcome(outcome, now)

        self.record = await self.store.transition.mutate(update)
        self.metrics.node_outcomes_total.labels(outcome=outcome.outcome).inc()
        level = logging.INFO if outcome.outcome in ("ready", "removed") else logging.WARNING
        log.log(
            level,
            f"node {outcome.outcome}",
            extra=_ctx(
                record,
                event="handoff.done",
                node=outcome.node_id,
                outcome=outcome.outcome,
                detail=outcome.detail,
            ),
        )

    async def publish_refreshed(self) -> None:
        """Tell the registry the switch is done; marked in KV so a restart does not repeat it."""
        record = self.record
        if record is None or not record.needs_publish:
            return
        try:
            await self.publisher.publish(record.refreshed_event())
        except Exception as exc:  # retried by the reconcile loop
            log.warning(
                "broker.refreshed not published; will retry",
                extra=_ctx(record, event="broker.refreshed", error=repr(exc)),
            )
            return
        tid = record.transition_id
        self.record = await self.store.transition.mutate(
            lambda r: r.published() if r is not None and r.transition_id == tid else r
        )
        log.info("broker.refreshed published", extra=_ctx(record, event="broker.refreshed"))

    async def shutdown(self) -> None:
        """Cancel running work; a restart resumes it from the KV record."""
        tasks = [t for t in (self._transition_task, *self._upkeep.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def transition_running(self) -> bool:
        return self._transition_task is not None and not self._transition_task.done()

    async def wait_idle(self) -> None:
        """For tests and shutdown: until the running switch (if any) is over."""
        task = self._transition_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- upkeep ------------------------------------------------------------------------------------

    def _spawn_upkeep(self, node_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """At most one upkeep task per node; a switch cancels them all."""
        running = self._upkeep.get(node_id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(work())
        self._upkeep[node_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._upkeep.get(node_id) is done:
                del self._upkeep[node_id]

        task.add_done_callback(forget)

    async def _wait_upkeep(self) -> None:
        tasks = list(self._upkeep.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def heal(self) -> None:
        """Bring the current version up on every idle node that does not serve it (and re-check the rest)."""
        for node_id in list(self.pool.slots):
            if node_id not in self._node_tasks:
                self._spawn_upkeep(node_id, functools.partial(self._heal_node, node_id))
        await self._wait_upkeep()

    async def _heal_node(self, node_id: str) -> None:
        slot = self.pool.slots.get(node_id)
        target = self.pool.current
        if slot is None or target is None or slot.lock.locked():
            return
        async with slot.lock:
            if self.pool.current != target or node_id in self._node_tasks:
                return
            was_ready = slot.ready and slot.version == target
            h, cmd = hf.start(node_id, target, (), slot.config.model, self.policies.heal, self.clock())
            finish = await self._drive(h, cmd, {"version": target.raw})
            if self.pool.current != target:
                return
            self.pool.mark(
                node_id, ready=finish.serving, phase="ready" if finish.serving else "failed", version=target
            )
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

    async def retry_pending_stops(self) -> None:
        """One attempt per pending stop: stop, then confirm STOPPED; confirmed ones are dropped."""
        pending = await self.store.pending.load()
        stale = [
            p for p in pending.items if p.version == self.pool.current or p.node_id not in self.pool.slots
        ]
        if stale:

            def drop(items: PendingStops) -> PendingStops:
                for p in stale:
                    items = items.remove(p.node_id, p.version)
                return items

            pending = await self.store.pending.mutate(drop)
            self.metrics.pending_stops.set(len(pending.items))
        for stop in pending.items:
            if stop.node_id not in self._node_tasks:
                self._spawn_upkeep(stop.node_id, functools.partial(self._retry_stop, stop))
        await self._wait_upkeep()

    async def _retry_stop(self, stop: PendingStop) -> None:
        slot = self.pool.slots.get(stop.node_id)
        if slot is None or slot.lock.locked():
            return
        async with slot.lock:
            if stop.version == self.pool.current or stop.node_id in self._node_tasks:
                return  # never stop the version that serves now
            h, cmd = hf.start(stop.node_id, None, (stop.version,), None, self.policies.pending, self.clock())
            ctx = {"transition": stop.transition_id, "version": str(self.pool.current)}
            finish = await self._drive(h, cmd, ctx)
        if finish.confirmed:
            pending = await self.store.pending.mutate(lambda p: p.remove(stop.node_id, stop.version))
            self.metrics.stops_confirmed_total.inc()
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
            error = finish.unconfirmed[0][1] if finish.unconfirmed else finish.outcome.detail
            pending = await self.store.pending.mutate(
                lambda p: (
                    p.add(stop.model_copy(update={"attempts": 1, "last_error": error[:2000]}))
                    if any(x.key == stop.key for x in p.items)
                    else p
                )
            )
        self.metrics.pending_stops.set(len(pending.items))

    async def reconcile(self) -> None:
        """The safety net: follow the registry, finish publishing, bring up nodes that do not serve.

        Pending stops have their own, shorter, round (`retry_pending_stops`).
        """
        await self.sync()
        await self.resume_unfinished()
        await self.publish_refreshed()
        await self.heal()

    async def resume_unfinished(self) -> None:
        """A switch whose run ended without every outcome (a node's handoff crashed): run the rest."""
        record = self.record
        if record is not None and not record.complete and not self.transition_running():
            await self.apply(Change(record.transition_id, record.previous, record.target, record.height))

    # -- readiness -------------------------------------------------------------------------------

    async def probe_readiness(self) -> BrokerReadiness | None:
        """Probe the next plan's version on every node; publish `broker.readiness` when it changed."""
        state = await self.registry.state()
        if state is None:
            return self.readiness
        plan = next_plan(state)
        if plan is None:
            self.readiness = None
            self.metrics.target_ready.clear()
            return None
        probes = await asyncio.gather(
            *(self._probe(slot.config, plan.node_version) for slot in list(self.pool.slots.values()))
        )
        readiness = report(plan, probes)
        self.readiness = readiness
        self.metrics.target_ready.clear()
        for node in readiness.nodes:
            self.metrics.target_ready.labels(node=node.node_id, version=plan.node_version.raw).set(
                1 if node.ready else 0
            )
        if readiness != self._published_readiness:
            not_ready = [n.node_id for n in readiness.nodes if not n.ready]
            log.log(
                logging.WARNING if not_ready else logging.INFO,
                "readiness for the next switch changed",
                extra={
                    "event": "broker.readiness",
                    "version": plan.node_version.raw,
                    "height": plan.height,
                    "not_ready": not_ready[:50],
                    "nodes": len(readiness.nodes),
                },
            )
            try:
                await self.publisher.publish(readiness)
            except Exception as exc:
                log.warning("broker.readiness not published", extra={"error": repr(exc)})
            else:
                self._published_readiness = readiness
        return readiness

    async def _probe(self, node: NodeConfig, version: MLNodeVersion) -> Probe:
        state: str | None = None
        state_error = health_error = ""
        try:
            state = await self.gateway.state(node, version)
        except MLNodeCallError as exc:
            state_error = str(exc)
        try:
            await self.gateway.management_health(node, version)
        except MLNodeCallError as exc:
            health_error = str(exc)
        return Probe(node.id, state, state_error, health_error)

    # -- admin -----------------------------------------------------------------------------------

    async def add_node(self, node: NodeConfig) -> None:
        def add(nodes: NodeSet) -> NodeSet:
            if nodes.get(node.id) is not None:
                raise NodeExists(f"node {node.id!r} exists; use PUT to change it")
            return nodes.with_node(node)

        await self.store.nodes.mutate(add)
        self.pool.upsert(node)
        if self.pool.current is not None:
            self.pool.mark(node.id, ready=False, phase="starting", version=self.pool.current)
            self._spawn_upkeep(node.id, functools.partial(self._heal_node, node.id))
        log.info("node added", extra={"event": "node.add", "node": node.id})

    async def update_node(self, node: NodeConfig) -> None:
        def update(nodes: NodeSet) -> NodeSet:
            if nodes.get(node.id) is None:
                raise NodeMissing(node.id)
            return nodes.with_node(node)

        await self.store.nodes.mutate(update)
        self.pool.upsert(node)  # calls from now on use the new address
        log.info("node updated", extra={"event": "node.update", "node": node.id})

    async def remove_node(self, node_id: str) -> None:
        def remove(nodes: NodeSet) -> NodeSet:
            if nodes.get(node_id) is None:
                raise NodeMissing(node_id)
            return nodes.without(node_id)

        await self.store.nodes.mutate(remove)
        for tasks in (self._node_tasks, self._upkeep):
            task = tasks.get(node_id)
            if task is not None:
                task.cancel()
        self.pool.remove(node_id)
        self.gateway.forget(node_id)
        pending = await self.store.pending.mutate(lambda p: p.forget_node(node_id))
        self.metrics.pending_stops.set(len(pending.items))
        record = self.record
        if record is not None and node_id in record.remaining:
            await self._record_outcome(record, NodeOutcome(node_id=node_id, outcome="removed"))
            if self.record is not None and self.record.complete and not self.transition_running():
                await self.publish_refreshed()
        log.info("node removed", extra={"event": "node.remove", "node": node_id})
