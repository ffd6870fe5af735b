"""Switches end to end against in-memory MLNodes, registry, bus and KV: no sockets."""

from __future__ import annotations

import asyncio

import pytest

from services.broker.models import NodeConfig, NodeSet, PendingStop, PendingStops
from services.broker.transition import TransitionRecord
from shared.events import BrokerReadiness, BrokerRefreshed, NodeOutcome
from shared.registry_api import PendingPlan, RegistryState
from shared.versions import MLNodeVersion
from tests.unit.broker_fakes import (
    V6,
    V8,
    V9,
    Harness,
    changed,
    harness,
    node,
    running_on_v6,
    switch,
    until,
)


def refreshed(h: Harness) -> list[BrokerRefreshed]:
    return [e for e in h.publisher.events if isinstance(e, BrokerRefreshed)]


async def test_switch_stops_the_old_version_once_and_brings_the_new_one_up() -> None:
    h = await running_on_v6("a", "b")
    await switch(h)
    for n in ("a", "b"):
        assert h.mlnodes.of("stop", V6, n) == 1
        assert h.mlnodes.of("up", V8, n) == 1
        assert h.mlnodes.gpu[n] == V8
        assert h.pool.slots[n].ready and h.pool.slots[n].version == V8
    assert h.mlnodes.of("stop", V8) == 0
    (event,) = refreshed(h)
    assert event.version == V8 and event.previous == V6
    assert {(o.node_id, o.outcome) for o in event.nodes} == {("a", "ready"), ("b", "ready")}
    record = await h.store.transition.load()
    assert record is not None and record.complete and record.refreshed_published
    assert h.metrics.sample("mlnode_upgrade_broker_stops_confirmed_total") == 2


async def test_redelivered_event_does_nothing_twice() -> None:
    h = await running_on_v6("a")
    await switch(h)
    await switch(h)
    assert h.mlnodes.of("stop") == 1 and h.mlnodes.of("up", V8) == 1
    assert len(refreshed(h)) == 1


async def test_the_record_is_persisted_before_any_node_is_touched() -> None:
    h = await running_on_v6("a")
    seen: list[TransitionRecord | None] = []
    real_stop = h.mlnodes.stop

    async def stop_spy(n: NodeConfig, version: MLNodeVersion) -> None:
        seen.append(await h.store.transition.load())
        await real_stop(n, version)

    h.mlnodes.stop = stop_spy  # type: ignore[method-assign,assignment]
    await switch(h)
    assert seen and seen[0] is not None and seen[0].target == V8 and seen[0].stop == (V6,)


async def test_restart_mid_switch_stops_the_old_version_not_the_new() -> None:
    """The broker died after persisting the switch, before the stop: the record says what to do."""
    h = harness(node("a"))
    h.mlnodes.running("a", V6)
    record = TransitionRecord(transition_id="100-v3.0.8", target=V8, previous=V6, stop=(V6,), nodes=("a",))
    await h.store.transition.mutate(lambda _: record)
    await h.coordinator.start(())  # the registry does not even answer
    await h.coordinator.wait_idle()
    assert h.mlnodes.of("stop", V6) == 1 and h.mlnodes.of("stop", V8) == 0
    assert h.mlnodes.gpu["a"] == V8
    assert len(refreshed(h)) == 1


async def test_start_up_with_current_not_last_used_hands_over_from_last_used() -> None:
    h = harness(node("a"))
    h.mlnodes.running("a", V6)
    h.registry.current = RegistryState(
        current_version=V8, last_used_version=V6, current_transition="100-v3.0.8"
    )
    await h.coordinator.start(())
    await h.coordinator.sync()
    await h.coordinator.wait_idle()
    assert h.mlnodes.of("stop", V6) == 1 and h.mlnodes.of("stop", V8) == 0
    assert h.mlnodes.states[("a", V8)] == "INFERENCE"
    assert refreshed(h)[0].transition_id == "100-v3.0.8"


async def test_completed_but_unpublished_switch_is_published_at_start_up() -> None:
    h = harness(node("a"))
    record = TransitionRecord(transition_id="t", target=V8, nodes=("a",)).with_outcome(
        NodeOutcome(node_id="a", outcome="ready"), 1.0
    )
    await h.store.transition.mutate(lambda _: record)
    await h.coordinator.start(())
    assert [e.transition_id for e in refreshed(h)] == ["t"]
    stored = await h.store.transition.load()
    assert stored is not None and stored.refreshed_published
    assert h.mlnodes.calls == []


async def test_stop_failing_twice_with_500_is_retried_and_confirmed() -> None:
    h = await running_on_v6("a")
    h.mlnodes.faults[("a", V6, "stop")] = [500, 500]
    await switch(h)
    assert h.mlnodes.of("stop", V6) == 3 and h.mlnodes.of("state", V6) == 2  # what it runs, then STOPPED
    assert refreshed(h)[0].nodes[0].outcome == "ready"
    assert (await h.store.pending.load()).items == ()


async def test_unreachable_old_version_is_reported_kept_pending_and_stopped_once_back() -> None:
    h = await running_on_v6("a", "b")
    h.mlnodes.unreachable.add(("a", V6))
    del h.mlnodes.gpu["a"]  # a dead container holds no GPU
    await switch(h)
    outcomes = {o.node_id: o for o in refreshed(h)[0].nodes}
    assert outcomes["a"].outcome == "stop_pending" and "no answer" in outcomes["a"].detail
    assert outcomes["b"].outcome == "ready"
    assert h.pool.slots["a"].ready  # the new version serves meanwhile
    (pending,) = (await h.store.pending.load()).items
    assert (pending.node_id, pending.version, pending.transition_id) == ("a", V6, "100-v3.0.8")
    assert h.metrics.sample("mlnode_upgrade_broker_pending_stops") == 1

    await h.coordinator.retry_pending_stops()  # still away: one more attempt, still pending
    (pending,) = (await h.store.pending.load()).items
    assert pending.attempts == 2

    h.mlnodes.unreachable.clear()
    stops_before = h.mlnodes.of("stop", V6, "a")
    await h.coordinator.retry_pending_stops()
    assert h.mlnodes.of("stop", V6, "a") == stops_before + 1
    assert (await h.store.pending.load()).items == ()
    assert h.metrics.sample("mlnode_upgrade_broker_pending_stops") == 0
    assert h.mlnodes.of("stop", V8) == 0


@pytest.mark.parametrize("busy_status", [409, 500])
async def test_a_busy_gpu_is_not_yet_whether_it_answers_409_or_500(busy_status: int) -> None:
    """An old version alive but unreachable keeps the GPU: the new one's up fails until it is stopped."""
    h = await running_on_v6("a")
    h.mlnodes.gpu_busy_status = busy_status
    h.mlnodes.unreachable.add(("a", V6))  # its proxy route is gone; the container still holds the GPU
    await switch(h)
    (outcome,) = refreshed(h)[0].nodes
    assert outcome.outcome != "ready" and f"{busy_status}" in outcome.detail
    assert not h.pool.slots["a"].ready

    h.mlnodes.unreachable.clear()
    await h.coordinator.retry_pending_stops()
    await h.coordinator.wait_idle()
    assert h.mlnodes.states[("a", V6)] == "STOPPED" and "a" not in h.mlnodes.gpu
    await h.coordinator.heal()
    await h.coordinator.wait_idle()
    assert h.mlnodes.states[("a", V8)] == "INFERENCE" and h.mlnodes.gpu["a"] == V8
    assert h.pool.slots["a"].ready


async def test_pending_stop_of_a_version_that_became_current_again_is_dropped_never_sent() -> None:
    h = await running_on_v6("a")
    await h.store.pending.mutate(
        lambda _: PendingStops(items=(PendingStop(node_id="a", version=V6, transition_id="old"),))
    )
    await h.coordinator.retry_pending_stops()
    assert h.mlnodes.of("stop") == 0
    assert (await h.store.pending.load()).items == ()


async def test_rollback_drops_the_pending_stop_of_the_version_rolled_back_to() -> None:
    h = await running_on_v6("a")
    h.mlnodes.unreachable.add(("a", V6))
    del h.mlnodes.gpu["a"]
    await switch(h)
    assert len((await h.store.pending.load()).items) == 1
    h.mlnodes.unreachable.clear()
    await switch(h, changed(previous=V8, current=V6, tid="rollback-1"))
    assert (await h.store.pending.load()).items == ()
    assert h.mlnodes.states[("a", V6)] == "INFERENCE" and h.mlnodes.states[("a", V8)] == "STOPPED"
    assert h.pool.current == V6 and h.pool.slots["a"].ready


async def test_requests_during_the_switch_wait_then_go_to_the_new_version() -> None:
    h = await running_on_v6("a")
    in_flight = await h.pool.acquire(1.0)  # a request on v3.0.6 when the switch begins
    assert in_flight.version == V6
    h.registry.current = RegistryState(
        current_version=V8, last_used_version=V6, current_transition="100-v3.0.8"
    )
    await h.coordinator.on_version_changed(changed())
    waiting = asyncio.create_task(h.pool.acquire(5.0))
    await until(lambda: h.pool.slots["a"].phase == "drain")
    await asyncio.sleep(0)
    assert not waiting.done()  # gated: not sent to v3.0.6, not to a v3.0.8 still loading
    assert h.mlnodes.of("stop", V6) == 0  # the in-flight request is drained first
    h.pool.release(in_flight)
    lease = await asyncio.wait_for(waiting, 2.0)
    assert lease.version == V8 and h.mlnodes.states[("a", V8)] == "INFERENCE"
    assert h.mlnodes.of("stop", V6) == 1
    h.pool.release(lease)
    await h.coordinator.wait_idle()


async def test_stale_event_follows_the_registry_instead() -> None:
    h = await running_on_v6("a")
    h.registry.current = RegistryState(
        current_version=V9, last_used_version=V6, current_transition="200-v3.0.9"
    )
    await h.coordinator.on_version_changed(changed())  # an old event, replayed
    await h.coordinator.wait_idle()
    assert h.mlnodes.of("up", V8) == 0 and h.mlnodes.states[("a", V9)] == "INFERENCE"
    assert [e.transition_id for e in refreshed(h)] == ["200-v3.0.9"]


async def test_a_newer_switch_supersedes_a_running_one_and_stops_what_it_left() -> None:
    h = await running_on_v6("a")
    h.mlnodes.faults[("a", V8, "health")] = [503] * 5  # v3.0.8 loads slowly
    h.registry.current = RegistryState(
        current_version=V8, last_used_version=V6, current_transition="100-v3.0.8"
    )
    await h.coordinator.on_version_changed(changed())
    await until(lambda: h.pool.slots["a"].phase == "wait_healthy")
    await switch(h, changed(previous=V8, current=V9, tid="200-v3.0.9"))
    assert h.mlnodes.states[("a", V9)] == "INFERENCE" and h.mlnodes.gpu["a"] == V9
    assert h.mlnodes.states[("a", V8)] == "STOPPED" and h.mlnodes.states[("a", V6)] == "STOPPED"
    assert [e.transition_id for e in refreshed(h)] == ["200-v3.0.9"]


async def test_node_removed_mid_switch_counts_as_removed() -> None:
    h = await running_on_v6("a", "b")
    h.mlnodes.faults[("b", V8, "health")] = [503] * 1000
    h.registry.current = RegistryState(
        current_version=V8, last_used_version=V6, current_transition="100-v3.0.8"
    )
    await h.coordinator.on_version_changed(changed())
    await until(lambda: h.pool.slots["b"].phase == "wait_healthy")
    await h.coordinator.remove_node("b")
    await h.coordinator.wait_idle()
    outcomes = {o.node_id: o.outcome for o in refreshed(h)[0].nodes}
    assert outcomes == {"a": "ready", "b": "removed"}
    nodes = await h.store.nodes.load()
    assert [n.id for n in nodes.nodes] == ["a"]
    assert h.mlnodes.forgotten == ["b"]  # its connections are released


async def test_failed_bring_up_is_reported_and_healed_by_reconcile() -> None:
    h = await running_on_v6("a")
    h.mlnodes.faults[("a", V8, "up")] = [500, 500]
    await switch(h)
    assert refreshed(h)[0].nodes[0].outcome == "failed"
    assert not h.pool.slots["a"].ready
    await h.coordinator.reconcile()
    assert h.pool.slots["a"].ready and h.mlnodes.states[("a", V8)] == "INFERENCE"


async def test_heal_brings_up_a_new_node_and_never_stops_anything() -> None:
    h = await running_on_v6("a")
    await h.coordinator.add_node(node("c"))
    await h.coordinator.heal()
    assert h.pool.slots["c"].ready and h.mlnodes.states[("c", V6)] == "INFERENCE"
    assert h.mlnodes.of("stop") == 0
    assert [n.id for n in (await h.store.nodes.load()).nodes] == ["a", "c"]


async def test_config_file_seeds_the_store_once() -> None:
    h = harness()
    h.store.nodes.value = NodeSet()  # type: ignore[attr-defined]
    await h.coordinator.start((node("a"),))
    assert [n.id for n in (await h.store.nodes.load()).nodes] == ["a"]
    await h.coordinator.remove_node("a")
    await h.coordinator.start((node("a"),))  # a restart does not resurrect a removed node
    assert (await h.store.nodes.load()).nodes == ()


async def test_publish_failure_is_retried_by_reconcile() -> None:
    h = await running_on_v6("a")
    h.publisher.fail = True
    await switch(h)
    record = await h.store.transition.load()
    assert record is not None and record.complete and not record.refreshed_published
    h.publisher.fail = False
    await h.coordinator.reconcile()
    assert len(refreshed(h)) == 1
    record = await h.store.transition.load()
    assert record is not None and record.refreshed_published


async def test_a_readiness_probe_is_one_call_when_the_health_answer_carries_the_state() -> None:
    h = await running_on_v6("a", "b")
    h.registry.current = RegistryState(
        current_version=V6, last_used_version=V6, pending=(PendingPlan(height=200, node_version=V8),)
    )
    h.mlnodes.health_carries_state = True
    h.mlnodes.calls.clear()
    report = await h.coordinator.probe_readiness()
    assert report is not None and all(n.ready for n in report.nodes)
    assert sorted(h.mlnodes.calls) == [("a", "mgmt_health", V8), ("b", "mgmt_health", V8)]

    h.mlnodes.health_carries_state = False  # a health answer without it: the state is asked for
    h.mlnodes.calls.clear()
    await h.coordinator.probe_readiness()
    assert sorted(c for c in h.mlnodes.calls if c[0] == "a") == [("a", "mgmt_health", V8), ("a", "state", V8)]


async def test_readiness_reports_a_node_without_a_route_for_the_target_before_the_height() -> None:
    h = await running_on_v6("a", "b")
    h.mlnodes.missing_route.add(("b", V8))
    h.registry.current = RegistryState(
        current_version=V6,
        last_used_version=V6,
        pending=(PendingPlan(height=200, node_version=V8),),
    )
    report = await h.coordinator.probe_readiness()
    assert report is not None and report.target_version == V8 and report.height == 200
    nodes = {n.node_id: n for n in report.nodes}
    assert nodes["a"].ready and not nodes["b"].ready and "404" in nodes["b"].reason
    assert h.metrics.sample("mlnode_upgrade_broker_target_ready", node="b", version="v3.0.8") == 0
    assert h.metrics.sample("mlnode_upgrade_broker_target_ready", node="a", version="v3.0.8") == 1

    await h.coordinator.probe_readiness()  # unchanged: not published again
    assert len([e for e in h.publisher.events if isinstance(e, BrokerReadiness)]) == 1
    h.mlnodes.missing_route.clear()
    await h.coordinator.probe_readiness()
    published = [e for e in h.publisher.events if isinstance(e, BrokerReadiness)]
    assert len(published) == 2 and all(n.ready for n in published[-1].nodes)

    h.registry.current = RegistryState(current_version=V6, last_used_version=V6)
    assert await h.coordinator.probe_readiness() is None and h.coordinator.readiness is None


async def test_a_crashed_node_handoff_is_resumed_by_reconcile_even_without_the_registry() -> None:
    h = await running_on_v6("a")
    real_up = h.mlnodes.inference_up
    crashes = [RuntimeError("a bug")]

    async def crashing_up(
        n: NodeConfig, version: MLNodeVersion, model: str, args: tuple[str, ...], dtype: str | None = None
    ) -> None:
        if crashes:
            raise crashes.pop()
        await real_up(n, version, model, args, dtype)

    h.mlnodes.inference_up = crashing_up  # type: ignore[method-assign,assignment]
    await switch(h)
    record = await h.store.transition.load()
    assert record is not None and not record.complete and refreshed(h) == []
    h.registry.current = None  # the registry is away too
    await h.coordinator.reconcile()
    await h.coordinator.wait_idle()
    assert h.pool.slots["a"].ready and h.mlnodes.states[("a", V8)] == "INFERENCE"
    assert [o.outcome for o in refreshed(h)[0].nodes] == ["ready"]
