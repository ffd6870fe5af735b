"""Which switch to run, from events, the registry's state and the persisted record."""

from __future__ import annotations

from services.broker.transition import (
    Change,
    TransitionRecord,
    begin,
    change_from_event,
    change_from_registry,
    decide,
)
from shared.events import NodeOutcome, VersionChanged
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

V6 = MLNodeVersion("v3.0.6")
V7 = MLNodeVersion("v3.0.7")
V8 = MLNodeVersion("v3.0.8")


def record(**fields: object) -> TransitionRecord:
    base: dict[str, object] = {
        "transition_id": "100-v3.0.8",
        "target": V8,
        "previous": V6,
        "stop": (V6,),
        "nodes": ("a", "b"),
    }
    base.update(fields)
    return TransitionRecord.model_validate(base)


def outcome(node: str, kind: str = "ready") -> NodeOutcome:
    return NodeOutcome(node_id=node, outcome=kind)  # type: ignore[arg-type]


def test_event_becomes_a_change() -> None:
    event = VersionChanged(transition_id="100-v3.0.8", previous=V6, current=V8, height=100)
    assert change_from_event(event) == Change("100-v3.0.8", V6, V8, 100, "plan")


def test_registry_with_current_not_last_used_hands_over_from_last_used() -> None:
    state = RegistryState(
        current_version=V8, last_used_version=V6, current_transition="100-v3.0.8", last_height=101
    )
    change = change_from_registry(state, None)
    assert change == Change("100-v3.0.8", V6, V8, 101, "sync")
    # The old version gets the stop, never the new one.
    new = begin(None, change, ("a",), now=1.0)
    assert new.stop == (V6,) and new.target == V8


def test_registry_in_step_asks_nothing() -> None:
    state = RegistryState(current_version=V8, last_used_version=V8, current_transition="100-v3.0.8")
    assert change_from_registry(state, None) is None
    assert change_from_registry(state, record(outcomes={"a": outcome("a"), "b": outcome("b")})) is None
    assert change_from_registry(RegistryState(), None) is None


def test_registry_in_step_on_another_version_than_our_record_moves_us() -> None:
    state = RegistryState(current_version=V7, last_used_version=V7, current_transition="200-v3.0.7")
    assert change_from_registry(state, record()) == Change("200-v3.0.7", V8, V7, 0, "sync")


def test_registry_without_a_transition_id_gets_a_synthetic_one() -> None:
    state = RegistryState(current_version=V8, last_used_version=None)
    change = change_from_registry(state, None)
    assert change is not None and change.transition_id == "sync-v3.0.8" and change.previous is None
    assert begin(None, change, ("a",), 0).stop == ()  # nothing ran before: nothing to stop


def test_decide() -> None:
    change = Change("100-v3.0.8", V6, V8)
    assert decide(None, change) == "start"
    assert decide(record(), change) == "resume"
    done = record(outcomes={"a": outcome("a"), "b": outcome("b")})
    assert decide(done, change) == "ignore"
    assert decide(record(seen=("50-v3.0.6",)), Change("50-v3.0.6", None, V6)) == "ignore"
    assert decide(done, Change("200-v3.0.7", V8, V7)) == "start"
    assert decide(record(), Change("100-v3.0.8", V6, V7)) == "start"


def test_superseding_an_unfinished_switch_stops_everything_it_may_have_left_running() -> None:
    unfinished = record(outcomes={"a": outcome("a")})
    new = begin(unfinished, Change("200-v3.0.7", V8, V7), ("a", "b"), now=5.0)
    assert new.target == V7 and set(new.stop) == {V6, V8}
    assert new.seen[-1] == "100-v3.0.8" and new.outcomes == {} and new.started_at == 5.0


def test_rollback_to_the_previous_version_never_lists_it_for_a_stop() -> None:
    unfinished = record()
    rollback = begin(unfinished, Change("rollback-1", V8, V6, reason="rollback"), ("a",), now=0)
    assert rollback.stop == (V8,)


def test_outcomes_complete_the_switch_once_and_the_first_outcome_wins() -> None:
    rec = record()
    rec = rec.with_outcome(outcome("a"), now=2.0)
    assert not rec.complete and rec.remaining == ("b",) and rec.finished_at is None
    rec = rec.with_outcome(outcome("b", "stop_pending"), now=3.0)
    assert rec.complete and rec.finished_at == 3.0 and rec.needs_publish
    again = rec.with_outcome(outcome("b", "failed"), now=4.0)
    assert again == rec
    assert rec.with_outcome(outcome("stranger"), now=4.0) == rec
    assert not rec.published().needs_publish


def test_refreshed_event_carries_every_outcome_in_node_order() -> None:
    rec = record().with_outcome(outcome("b", "stop_pending"), 1).with_outcome(outcome("a"), 2)
    event = rec.refreshed_event()
    assert event.transition_id == "100-v3.0.8" and event.version == V8 and event.previous == V6
    assert [(n.node_id, n.outcome) for n in event.nodes] == [("a", "ready"), ("b", "stop_pending")]
    assert event.msg_id() == "refreshed-100-v3.0.8"


def test_a_switch_with_no_nodes_is_complete_at_once() -> None:
    assert record(nodes=()).complete
