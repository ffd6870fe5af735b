"""What each switch needed (the switch log) and the live view, through the coordinator's fakes."""

from __future__ import annotations

from services.broker import handoff as hf
from services.broker import live_view
from services.broker.models import PendingStop
from services.broker.switch_log import KEPT, NODES_KEPT, SwitchLog, summarize
from services.broker.transition import NodeStops, TransitionRecord
from shared.events import NodeOutcome
from shared.registry_api import PendingPlan, RegistryState
from tests.unit.broker_fakes import V6, V8, V9, changed, running_on_v6, switch
from tests.unit.handoff_script import NEW, OLD
from tests.unit.test_broker_handoff import healthy_node, run

# -- the handoff counts what its stops needed -------------------------------------------------------


def test_a_stop_confirmed_at_once_needed_one_call_and_no_time() -> None:
    _, finish = run(healthy_node)
    assert (finish.stop_calls, finish.stop_s) == (1, 0.0)


def test_a_stop_retried_twice_counts_three_calls_over_the_backoff() -> None:
    failures = [500, 500]

    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.SendStop) and failures:
            return hf.Failed("POST /stop: 500", 500)
        return healthy_node(cmd)

    _, finish = run(respond)
    assert finish.stop_calls == 3
    assert finish.stop_s == 3.0  # backoff 1 s then 2 s on the scripted clock


def test_a_handoff_with_nothing_to_stop_needed_no_stop() -> None:
    _, finish = run(healthy_node, stop=())
    assert (finish.stop_calls, finish.stop_s) == (0, None)


def test_an_unconfirmed_stop_counts_every_attempt() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.SendStop):
            return hf.Failed("POST /stop: 404", 404)
        return healthy_node(cmd)

    _, finish = run(respond)
    assert finish.outcome.outcome == "stop_pending" and finish.stop_calls == 3


# -- the switch log ----------------------------------------------------------------------------------


def record(
    nodes: dict[str, tuple[str, int]], tid: str = "100-v3.0.8", complete: bool = True
) -> TransitionRecord:
    r = TransitionRecord(
        transition_id=tid,
        target=NEW,
        previous=OLD,
        stop=(OLD,),
        height=100,
        nodes=tuple(nodes),
        started_at=10.0,
    )
    for i, (node_id, (outcome, calls)) in enumerate(nodes.items()):
        if not complete and i == len(nodes) - 1:
            break
        r = r.with_outcome(
            NodeOutcome(node_id=node_id, outcome=outcome),  # type: ignore[arg-type]
            12.5,
            NodeStops(calls=calls, seconds=0.1 * calls),
        )
    return r


def test_a_summary_puts_the_nodes_that_needed_more_first_and_counts_them_all() -> None:
    s = summarize(record({"a": ("ready", 1), "b": ("stop_pending", 3), "c": ("ready", 2)}))
    assert [n.node_id for n in s.nodes] == ["b", "c", "a"]
    assert s.result == "stop_pending" and s.handover_s == 2.5
    assert s.outcomes == {"ready": 2, "stop_pending": 1}
    assert s.stop_calls == {"1": 1, "2": 1, "3": 1}


def test_a_failed_node_makes_the_switch_failed_and_an_unfinished_one_is_superseded() -> None:
    assert summarize(record({"a": ("ready", 1), "b": ("failed", 1)})).result == "failed"
    unfinished = summarize(record({"a": ("ready", 1), "b": ("ready", 1)}, complete=False))
    assert unfinished.result == "superseded" and unfinished.outcomes == {"ready": 1, "unfinished": 1}


def test_the_log_is_bounded_and_a_switch_written_twice_is_kept_once() -> None:
    log = SwitchLog()
    for i in range(KEPT + 5):
        log = log.with_switch(summarize(record({"a": ("ready", 1)}, tid=f"{i}-v3.0.8")))
    log = log.with_switch(summarize(record({"a": ("ready", 1)}, tid=f"{KEPT + 4}-v3.0.8")))
    assert len(log.switches) == KEPT
    assert (
        log.switches[0].transition_id == "5-v3.0.8" and log.switches[-1].transition_id == f"{KEPT + 4}-v3.0.8"
    )


def test_a_big_fleet_keeps_the_unusual_nodes_and_the_counts_of_all() -> None:
    nodes = {f"n{i:04d}": ("ready", 1) for i in range(NODES_KEPT + 100)}
    nodes["n0150"] = ("stop_pending", 5)
    s = summarize(record(nodes))
    assert len(s.nodes) == NODES_KEPT and s.nodes[0].node_id == "n0150"
    assert s.nodes_total == NODES_KEPT + 100 and s.stop_calls == {"1": NODES_KEPT + 99, "5": 1}


# -- through the coordinator ---------------------------------------------------------------------------


async def test_a_finished_switch_is_in_the_history_with_what_each_stop_needed() -> None:
    h = await running_on_v6("a", "b")
    h.mlnodes.faults[("a", V6, "stop")] = [500]
    await switch(h)
    (s,) = (await h.coordinator.history.load()).switches
    assert (s.transition_id, s.result, s.previous, s.target) == ("100-v3.0.8", "done", "v3.0.6", "v3.0.8")
    by_node = {n.node_id: n for n in s.nodes}
    assert by_node["a"].stop_calls == 2 and by_node["b"].stop_calls == 1
    assert s.handover_s is not None and s.handover_s >= 0
    doc = await h.coordinator.status.history(10)
    assert doc["switches"][0]["handover_s"] == s.handover_s


async def test_a_pending_stop_confirmed_later_is_noted_on_its_switch() -> None:
    h = await running_on_v6("a", "b")
    h.mlnodes.unreachable.add(("a", V6))
    del h.mlnodes.gpu["a"]
    await switch(h)
    (s,) = (await h.coordinator.history.load()).switches
    assert s.result == "stop_pending"
    h.mlnodes.unreachable.clear()
    await h.coordinator.retry_pending_stops()
    (s,) = (await h.coordinator.history.load()).switches
    a = next(n for n in s.nodes if n.node_id == "a")
    assert a.confirmed_later_at is not None and a.later_retries == 1
    assert h.coordinator.pending.retried == 1


async def test_a_switch_superseded_before_it_finished_is_in_the_history_as_superseded() -> None:
    h = await running_on_v6("a")
    await switch(h)
    await switch(h, changed(V8, V9, "200-v3.0.9"))
    ids = [s.transition_id for s in (await h.coordinator.history.load()).switches]
    assert ids == ["100-v3.0.8", "200-v3.0.9"]


# -- the live view -------------------------------------------------------------------------------------


async def test_the_live_view_shows_the_countdown_the_nodes_and_the_result() -> None:
    h = await running_on_v6("a", "b")
    h.registry.current = RegistryState(
        current_version=V6,
        last_used_version=V6,
        last_height=90,
        block_time_s=2.0,
        pending=(PendingPlan(height=100, node_version=V8),),
    )
    doc = await h.coordinator.status.live()
    assert doc["chain"] == {"height": 90, "block_time_s": 2.0}
    assert doc["pending"] == [
        {"height": 100, "node_version": "v3.0.8", "name": "", "blocks_left": 10, "seconds_left": 20.0}
    ]
    assert [n["id"] for n in doc["nodes"]] == ["a", "b"] and doc["result"] is None
    assert all(n["phase"] == "ready" and n["phase_for_s"] >= 0 for n in doc["nodes"])

    await switch(h)
    doc = await h.coordinator.status.live()
    assert doc["result"] == "done" and doc["switch"]["complete"] and doc["switch"]["remaining"] == []
    assert {n["version"] for n in doc["nodes"]} == {"v3.0.8"}
    assert {n["outcome"] for n in doc["nodes"]} == {"ready"}


async def test_the_live_view_asks_the_registry_at_most_once_per_ttl() -> None:
    h = await running_on_v6("a")
    asked = h.registry.asked
    for _ in range(5):
        await h.coordinator.status.live()
    assert h.registry.asked == asked + 1


def test_the_live_view_counts_requests_and_stops() -> None:
    stop = PendingStop(node_id="a", version=V6, transition_id="t", attempts=3, last_error="x", since=1.0)
    doc = live_view.live_view(
        now=100.0,
        state=None,
        current=V8,
        nodes=[live_view.LiveNode("a", V8, False, "bring_up", 97.5, 0)],
        record=None,
        readiness=None,
        pending_stops=[stop],
        stops_retried=2,
        held=4,
        served={V6: 10, V8: 3},
        in_flight={V6: 0, V8: 1},
    )
    assert doc["requests"] == {"held": 4, "served": {"v3.0.6": 10, "v3.0.8": 3}, "in_flight": {"v3.0.8": 1}}
    assert doc["stops"]["retried"] == 2 and doc["stops"]["pending"][0]["attempts"] == 3
    assert doc["nodes"][0]["phase_for_s"] == 2.5 and doc["chain"]["height"] is None


async def test_the_upkeep_check_of_a_serving_node_does_not_reset_its_phase_or_its_time() -> None:
    h = await running_on_v6("a")
    since = h.pool.slots["a"].phase_since
    await h.coordinator.reconcile()
    assert h.mlnodes.calls, "the reconcile did check the node"
    slot = h.pool.slots["a"]
    assert (slot.phase, slot.phase_since) == ("ready", since)


def test_the_live_view_drops_the_readiness_report_once_its_plan_has_applied() -> None:
    from shared.events import BrokerReadiness, NodeReadiness

    report = BrokerReadiness(target_version=V8, nodes=(NodeReadiness(node_id="a", ready=True),))
    common: dict[str, object] = {
        "now": 1.0, "current": V6, "nodes": [], "record": None, "readiness": report, "pending_stops": [],
        "stops_retried": 0, "held": 0, "served": {}, "in_flight": {},
    }  # fmt: skip
    ahead = RegistryState(current_version=V6, pending=(PendingPlan(height=100, node_version=V8),))
    assert live_view.live_view(state=ahead, **common)["readiness"]["all_ready"] is True  # type: ignore[arg-type]
    applied = RegistryState(current_version=V8)
    assert live_view.live_view(state=applied, **common)["readiness"] is None  # type: ignore[arg-type]
