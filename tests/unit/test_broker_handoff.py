"""The per-node handoff machine, driven by scripted answers: no sockets, no clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.broker import handoff as hf
from tests.unit import handoff_script
from tests.unit.broker_fakes import running_on_v6, switch
from tests.unit.handoff_script import NEW, OLD, OTHER, POLICY, Responder

MODEL = ("m", ("--x", "1"))


def run(respond: Responder, **options: Any) -> tuple[list[hf.Command], hf.Finish]:
    """A scripted handoff of a node configured with `MODEL` (unless the test names another)."""
    return handoff_script.run(respond, **{"model": MODEL, **options})


class HealthyNode:
    """Old version answers and stops; the new one is stopped, comes up on inference/up, is healthy.

    Like the real MLNode, inference/up on a target already in INFERENCE answers 409.
    """

    def __init__(self) -> None:
        self.target_state = "STOPPED"

    def __call__(self, cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.ReadWork():
                return hf.WorkIs("INFERENCE")
            case hf.CheckWaiting():
                return hf.Waiting(None)
            case hf.Drain():
                return hf.Drained(0)
            case hf.ReadState(version):
                return hf.StateIs("STOPPED" if version == OLD else self.target_state)
            case hf.BringUp():
                if self.target_state == "INFERENCE":
                    return hf.Failed("409 inference is already running", 409)
                self.target_state = "INFERENCE"
                return hf.Ok()
            case _:
                return hf.Ok()


healthy_node = HealthyNode()


@pytest.fixture(autouse=True)
def _fresh_node() -> None:
    healthy_node.target_state = "STOPPED"


def kinds(commands: list[hf.Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def test_full_handoff_drains_stops_confirms_then_brings_the_new_version_up() -> None:
    issued, finish = run(healthy_node)
    assert issued == [
        hf.ReadWork(OLD),
        hf.Drain((OLD,), 5),
        hf.SendStop(OLD),
        hf.ReadState(OLD),
        hf.CheckWaiting(),
        hf.BringUp(NEW, "m", ("--x", "1")),  # straight away: no state read of the target first
        hf.CheckHealth(NEW),
    ]
    assert finish.outcome.outcome == "ready" and finish.outcome.detail == ""
    assert finish.serving and finish.confirmed == (OLD,) and finish.unconfirmed == ()


def test_stop_failing_twice_with_500_is_retried_with_backoff_and_then_confirmed() -> None:
    failures = [500, 500]

    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.SendStop) and failures:
            return hf.Failed(f"POST /stop: {failures.pop()}", 500)
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert kinds(issued)[1:8] == ["Drain", "SendStop", "Wait", "SendStop", "Wait", "SendStop", "ReadState"]
    assert [c.seconds for c in issued if isinstance(c, hf.Wait)] == [1, 2]  # exponential backoff
    assert finish.outcome.outcome == "ready" and finish.confirmed == (OLD,)


def test_a_404_from_stop_is_not_success() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.SendStop):
            return hf.Failed("POST http://n/v3.0.6/api/v1/stop: 404 Not Found", 404)
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert kinds(issued).count("SendStop") == 3
    assert finish.outcome.outcome == "stop_pending"
    assert finish.unconfirmed[0][0] == OLD and "404" in finish.unconfirmed[0][1]
    assert "after 3 attempts" in finish.outcome.detail
    # An unconfirmed stop does not hold the node: the new version still comes up and serves.
    assert finish.serving and hf.BringUp(NEW, "m", ("--x", "1")) in issued


def test_stop_answered_ok_but_still_running_is_not_confirmed() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.ReadState) and cmd.version == OLD:
            return hf.StateIs("INFERENCE")
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert kinds(issued).count("SendStop") == 3
    assert finish.outcome.outcome == "stop_pending"
    assert "state is INFERENCE" in finish.outcome.detail


def test_unreachable_old_version_does_not_block_the_new_one() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.SendStop | hf.ReadState) and cmd.version == OLD:
            return hf.Failed("no answer (ConnectError)")
        return healthy_node(cmd)

    _, finish = run(respond)
    assert finish.serving and finish.outcome.outcome == "stop_pending"
    assert finish.unconfirmed == ((OLD, "POST stop: no answer (ConnectError) (after 3 attempts)"),)


def test_the_target_is_never_stopped_even_when_the_caller_lists_it() -> None:
    issued, finish = run(healthy_node, stop=(NEW, OLD, NEW))
    assert [c.version for c in issued if isinstance(c, hf.SendStop)] == [OLD]
    assert finish.confirmed == (OLD,)


def test_several_old_versions_are_each_stopped_and_confirmed() -> None:
    issued, finish = run(healthy_node, stop=(OLD, OTHER))
    assert issued[:2] == [hf.ReadWork(OLD), hf.Drain((OLD, OTHER), 5)]
    stops = [c for c in issued if isinstance(c, hf.SendStop | hf.ReadState)]
    assert stops[:4] == [hf.SendStop(OLD), hf.ReadState(OLD), hf.SendStop(OTHER), hf.ReadState(OTHER)]
    assert finish.confirmed == (OLD, OTHER)


def test_target_already_serving_is_not_loaded_again() -> None:
    """A handoff resumed after a crash finds the new version up: its inference/up answers 409,
    the target's state says INFERENCE, and only its /v1/models is checked."""
    healthy_node.target_state = "INFERENCE"
    issued, finish = run(healthy_node)
    assert issued[4:] == [
        hf.CheckWaiting(),
        hf.BringUp(NEW, "m", ("--x", "1")),
        hf.ReadState(NEW),
        hf.CheckHealth(NEW),
    ]
    assert finish.outcome.outcome == "ready" and finish.outcome.detail == ""


def test_bring_up_retries_after_reprobing_then_fails_with_the_reason() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.BringUp):
            return hf.Failed("409 GPU is held by node-1@v3.0.6", 409)
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert kinds(issued)[4:] == ["CheckWaiting", "BringUp", "ReadState", "Wait", "BringUp"]
    assert finish.outcome.outcome == "failed" and not finish.serving
    assert "GPU is held" in finish.outcome.detail


# --- inference/up without a state read first; a 409 reads the target at once --------------------


async def test_a_switch_makes_five_mlnode_calls_on_the_node() -> None:
    """state, stop, state of the old version; inference/up and /v1/models of the new one."""
    h = await running_on_v6("node-1")
    await switch(h)
    assert h.mlnodes.calls == [
        ("node-1", "state", OLD),
        ("node-1", "stop", OLD),
        ("node-1", "state", OLD),
        ("node-1", "up", NEW),
        ("node-1", "health", NEW),
    ]
    assert h.pool.slots["node-1"].ready and h.pool.slots["node-1"].version == NEW


def test_inference_up_answered_409_reads_the_target_at_once_and_checks_its_health() -> None:
    """A load under way or done already: no wait, no second inference/up, and no load time."""

    def respond(cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.BringUp():
                return hf.Failed("409 inference is already running", 409)
            case hf.ReadState(version) if version == NEW:
                return hf.StateIs("INFERENCE")
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert issued[4:] == [
        hf.CheckWaiting(),
        hf.BringUp(NEW, "m", ("--x", "1")),
        hf.ReadState(NEW),  # at once: no Wait before it
        hf.CheckHealth(NEW),
    ]
    assert finish.outcome.outcome == "ready" and finish.outcome.detail == ""
    assert finish.serving and finish.load_s is None  # this handoff did not time that load


@pytest.mark.parametrize(
    "found",
    [hf.StateIs("STOPPED"), hf.StateIs("POW"), hf.Failed("no answer (ConnectError)")],
    ids=["stopped", "pow", "unreadable"],
)
def test_409_then_a_target_not_serving_waits_the_backoff_then_brings_up_again(found: hf.Observation) -> None:
    conflicts = [409, 409]

    def respond(cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.BringUp() if conflicts:
                return hf.Failed("409 GPU is held by node-1@v3.0.6", conflicts.pop())
            case hf.ReadState(version) if version == NEW:
                return found
        return healthy_node(cmd)

    up = hf.BringUp(NEW, "m", ("--x", "1"))
    issued, finish = run(respond, policy=replace(POLICY, up_attempts=3))
    assert issued[4:] == [
        hf.CheckWaiting(),
        up,
        hf.ReadState(NEW),
        hf.Wait(1),  # up_backoff_s * failures
        up,
        hf.ReadState(NEW),
        hf.Wait(2),
        up,
        hf.CheckHealth(NEW),
    ]
    assert finish.outcome.outcome == "ready" and finish.serving


@pytest.mark.parametrize("status", [500, None], ids=["500", "no-answer"])
@pytest.mark.parametrize("found", ["STOPPED", "INFERENCE"])
def test_a_failure_other_than_409_waits_before_reading_the_target(status: int | None, found: str) -> None:
    failures = [status]

    def respond(cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.BringUp() if failures:
                return hf.Failed(f"inference/up: {failures.pop()}", status)
            case hf.ReadState(version) if version == NEW:
                return hf.StateIs(found)
        return healthy_node(cmd)

    up = hf.BringUp(NEW, "m", ("--x", "1"))
    issued, finish = run(respond)
    # INFERENCE: the load went through despite the failed answer, so only its health is checked.
    again = [hf.CheckHealth(NEW)] if found == "INFERENCE" else [up, hf.CheckHealth(NEW)]
    assert issued[4:] == [hf.CheckWaiting(), up, hf.Wait(1), hf.ReadState(NEW), *again]
    assert finish.outcome.outcome == "ready" and finish.serving


def test_health_is_awaited_until_the_timeout() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.CheckHealth):
            return hf.Failed("service_state is STOPPED")
        return healthy_node(cmd)

    issued, finish = run(respond)
    assert kinds(issued).count("CheckHealth") == 11  # every second for 10 s, then one past the limit
    assert finish.outcome.outcome == "failed"
    assert "not healthy after 10.0s" in finish.outcome.detail


def serving_after(loading_checks: int) -> Responder:
    """A healthy node whose new version answers `loading` to the first health checks."""
    answers: list[hf.Observation] = [hf.Failed("loading")] * loading_checks + [hf.Ok()]

    def respond(cmd: hf.Command) -> hf.Observation:
        if isinstance(cmd, hf.CheckHealth):
            return answers.pop(0)
        return healthy_node(cmd)

    return respond


def test_health_that_recovers_finishes_ready() -> None:
    issued, finish = run(serving_after(2))
    assert kinds(issued).count("CheckHealth") == 3 and finish.outcome.outcome == "ready"


def test_drain_timeout_is_reported_but_the_stop_goes_ahead() -> None:
    def respond(cmd: hf.Command) -> hf.Observation:
        return hf.Drained(2) if isinstance(cmd, hf.Drain) else healthy_node(cmd)

    issued, finish = run(respond)
    assert issued[2] == hf.SendStop(OLD)
    assert finish.outcome.outcome == "ready"
    assert "drain timed out with 2 request(s) in flight" in finish.outcome.detail


def test_stop_only_handoff_for_a_pending_stop() -> None:
    issued, finish = run(healthy_node, target=None, model=None)
    assert issued == [hf.Drain((OLD,), 5), hf.SendStop(OLD), hf.ReadState(OLD)]
    assert finish.confirmed == (OLD,) and not finish.serving


def test_bring_up_only_for_a_node_with_nothing_to_stop() -> None:
    # Nothing was stopped (upkeep, a new node): the target may serve already, so it is read first.
    issued, finish = run(healthy_node, stop=())
    assert kinds(issued) == ["CheckWaiting", "ReadState", "BringUp", "CheckHealth"]
    assert finish.outcome.outcome == "ready"


def test_upkeep_of_a_node_that_serves_sends_no_inference_up() -> None:
    healthy_node.target_state = "INFERENCE"
    issued, finish = run(healthy_node, stop=())
    assert kinds(issued) == ["CheckWaiting", "ReadState", "CheckHealth"]
    assert finish.outcome.outcome == "ready" and finish.load_s is None


def test_node_without_a_model_fails_clearly() -> None:
    _, finish = run(healthy_node, stop=(), model=None)
    assert finish.outcome.outcome == "failed"
    assert "no model configured" in finish.outcome.detail


def test_unexpected_observation_is_an_error() -> None:
    h, _ = hf.start("node-1", NEW, (OLD,), MODEL, POLICY, 0)
    with pytest.raises(ValueError, match="not expected in phase observe_work"):
        hf.advance(h, hf.Ok(), 0)
    h, _ = hf.advance(h, hf.WorkIs("INFERENCE"), 0)
    with pytest.raises(ValueError, match="not expected in phase drain"):
        hf.advance(h, hf.Ok(), 0)


def test_backoff_is_capped() -> None:
    assert [POLICY.stop_backoff(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 3, 3, 3]


_ANSWERS = st.sampled_from(["ok", "500", "404", "none", "running"])


@settings(max_examples=300, deadline=None)
@given(
    stop_answers=st.lists(_ANSWERS, max_size=12),
    up_fails=st.integers(min_value=0, max_value=3),
    up_conflict=st.booleans(),
    health_fails=st.integers(min_value=0, max_value=20),
)
def test_any_sequence_of_answers_terminates_and_never_stops_the_target(
    stop_answers: list[str], up_fails: int, up_conflict: bool, health_fails: int
) -> None:
    answers = list(stop_answers)
    counters = {"up": up_fails, "health": health_fails}

    def respond(cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.ReadWork():
                return hf.WorkIs("INFERENCE")
            case hf.CheckWaiting():
                return hf.Waiting(None)
            case hf.Drain():
                return hf.Drained(0)
            case hf.SendStop(version):
                assert version != NEW
                answer = answers.pop(0) if answers else "ok"
                return hf.Ok() if answer in ("ok", "running") else hf.Failed(answer)
            case hf.ReadState(version) if version == OLD:
                answer = answers.pop(0) if answers else "ok"
                return hf.StateIs("INFERENCE" if answer == "running" else "STOPPED")
            case hf.ReadState():
                return hf.StateIs("STOPPED")
            case hf.BringUp() | hf.CheckHealth():
                key = "up" if isinstance(cmd, hf.BringUp) else "health"
                if counters[key]:
                    counters[key] -= 1
                    return hf.Failed("not yet", 409 if up_conflict and key == "up" else None)
                return hf.Ok()
        raise AssertionError(cmd)

    _, finish = run(respond)
    outcome = finish.outcome.outcome
    assert outcome in ("ready", "stop_pending", "failed")
    assert (outcome == "stop_pending") == bool(finish.unconfirmed)
    assert set(finish.confirmed) | {v for v, _ in finish.unconfirmed} == {OLD}
    assert finish.serving == (up_fails < POLICY.up_attempts and health_fails <= 10)


def test_a_load_this_handoff_made_is_timed_from_inference_up_to_serving() -> None:
    _, finish = run(serving_after(2))
    assert finish.load_s == 2.0  # two 1 s health intervals on the fake clock


def test_a_target_found_serving_already_has_no_load_time() -> None:
    healthy_node.target_state = "INFERENCE"
    _, finish = run(healthy_node)
    assert finish.serving and finish.load_s is None
