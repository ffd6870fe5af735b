"""The handoff carries the node's work to the new version: scripted answers, no sockets, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.broker import handoff as hf
from services.broker.node_work import NodeWork, WorkKind
from shared.versions import MLNodeVersion
from tests.unit import handoff_script
from tests.unit.handoff_script import NEW, OLD, OTHER, POLICY, Responder

MODEL = ("configured/model", ("--x", "1"))
API = "/api/v1"
POW_BODY: dict[str, object] = {
    "url": "http://api-node:9100/v1/poc-batches",
    "block_hash": "0xabc",
    "block_height": 12000,
    "params": {"dim": 4096},
}
TRAIN_BODY: dict[str, object] = {"train_config": {"lr": 0.001}}
GENERATE = NodeWork(kind=WorkKind.POW_GENERATE, params=POW_BODY, route=f"{API}/pow/init/generate")


def run(respond: Responder, **options: Any) -> tuple[list[hf.Command], hf.Finish]:
    """A scripted handoff of a node configured with `MODEL` (unless the test names another)."""
    return handoff_script.run(respond, **{"model": MODEL, **options})


@dataclass
class Node:
    """An old version in `old_state` that stops when told; the target comes up when told."""

    old_state: str = "INFERENCE"
    pow_status: str | None = None
    waiting: str | None = None
    start_fails: int = 0
    target_state: str = "STOPPED"
    read_work_fails: bool = False
    seen: list[hf.Command] = field(default_factory=list)

    def __call__(self, cmd: hf.Command) -> hf.Observation:
        self.seen.append(cmd)
        match cmd:
            case hf.ReadWork():
                if self.read_work_fails:
                    return hf.Failed("no answer (ConnectError)")
                return hf.WorkIs(self.old_state, self.pow_status if self.old_state == "POW" else None)
            case hf.CheckWaiting():
                return hf.Waiting(self.waiting)
            case hf.Drain():
                return hf.Drained(0)
            case hf.SendStop():
                self.old_state = "STOPPED"
                return hf.Ok()
            case hf.ReadState(version):
                return hf.StateIs(self.old_state if version == OLD else self.target_state)
            case hf.BringUp():
                self.target_state = "INFERENCE"
                return hf.Ok()
            case hf.StartWork():
                if self.start_fails:
                    self.start_fails -= 1
                    return hf.Failed("500 Internal Server Error", 500)
                self.target_state = "POW" if "/pow/" in cmd.route else "TRAIN"
                return hf.Ok()
            case hf.CheckHealth():
                return hf.Ok() if self.target_state == "INFERENCE" else hf.Failed("no vLLM backend")
        raise AssertionError(cmd)


def brought_into_work(issued: list[hf.Command]) -> list[hf.Command]:
    return [c for c in issued if isinstance(c, hf.BringUp | hf.StartWork)]


def test_a_pow_generate_is_carried_with_the_api_nodes_own_body() -> None:
    issued, finish = run(Node(old_state="POW", pow_status="GENERATING"), work=GENERATE)
    assert issued == [
        hf.ReadWork(OLD),
        hf.Drain((OLD,), 5),
        hf.SendStop(OLD),
        hf.ReadState(OLD),
        hf.CheckWaiting(),
        hf.StartWork(NEW, f"{API}/pow/init/generate", POW_BODY),
    ]
    assert finish.outcome.outcome == "ready" and finish.outcome.detail == ""
    assert not finish.serving  # in PoC, not serving inference
    assert (finish.work, finish.carried) == ("pow_generate", True)
    assert (finish.outcome.work, finish.outcome.carried) == ("pow_generate", True)
    assert finish.confirmed == (OLD,)


def test_a_round_that_moved_on_to_validate_is_initialised_as_validate() -> None:
    issued, finish = run(Node(old_state="POW", pow_status="VALIDATING"), work=GENERATE)
    (start,) = brought_into_work(issued)
    assert start == hf.StartWork(NEW, f"{API}/pow/init/validate", POW_BODY)
    assert (finish.work, finish.carried) == ("pow_validate", True)


def test_pow_init_without_a_phase_is_initialised_again_as_it_was() -> None:
    work = NodeWork(kind=WorkKind.POW, params=POW_BODY, route=f"{API}/pow/init")
    issued, finish = run(Node(old_state="POW", pow_status="IDLE"), work=work)
    assert brought_into_work(issued) == [hf.StartWork(NEW, f"{API}/pow/init", POW_BODY)]
    assert (finish.work, finish.carried) == ("pow", True)


def test_training_is_started_again_with_its_body() -> None:
    work = NodeWork(kind=WorkKind.TRAIN, params=TRAIN_BODY, route=f"{API}/train/start")
    issued, finish = run(Node(old_state="TRAIN"), work=work)
    assert brought_into_work(issued) == [hf.StartWork(NEW, f"{API}/train/start", TRAIN_BODY)]
    assert (finish.work, finish.carried, finish.serving) == ("train", True, False)


def test_start_work_failing_every_attempt_fails_the_node_and_says_not_carried() -> None:
    issued, finish = run(Node(old_state="POW", start_fails=POLICY.up_attempts), work=GENERATE)
    starts = [c for c in issued if isinstance(c, hf.StartWork)]
    assert len(starts) == POLICY.up_attempts and all(c.version == NEW for c in starts)
    assert [c.seconds for c in issued if isinstance(c, hf.Wait)] == [1]  # backoff between the attempts
    assert finish.outcome.outcome == "failed" and not finish.serving
    assert finish.carried is False and finish.work == "stopped"
    assert "not carried" in finish.outcome.detail and "500" in finish.outcome.detail
    assert f"{API}/pow/init/generate" in finish.outcome.detail


def test_start_work_that_fails_once_is_retried_and_carried() -> None:
    issued, finish = run(Node(old_state="POW", start_fails=1), work=GENERATE)
    assert [type(c).__name__ for c in issued][-3:] == ["StartWork", "Wait", "StartWork"]
    assert finish.outcome.outcome == "ready" and finish.outcome.detail == ""
    assert (finish.work, finish.carried) == ("pow_generate", True)


def test_a_stopped_node_stays_stopped_on_the_new_version() -> None:
    stopped = NodeWork(kind=WorkKind.STOPPED, route=f"{API}/stop")
    issued, finish = run(Node(old_state="STOPPED"), work=stopped)
    assert brought_into_work(issued) == []
    assert not any(isinstance(c, hf.CheckHealth) or c == hf.ReadState(NEW) for c in issued)
    assert finish.outcome.outcome == "ready" and not finish.serving
    assert (finish.work, finish.carried) == ("stopped", True)


def test_a_waiting_api_node_call_takes_over_the_node() -> None:
    issued, finish = run(Node(waiting=f"{API}/stop"), work=GENERATE)
    assert brought_into_work(issued) == []
    assert issued[-1] == hf.CheckWaiting()
    assert finish.carried is False and finish.work == "stopped" and not finish.serving
    assert f"{API}/stop" in finish.outcome.detail
    assert finish.outcome.detail.startswith("pow_generate not carried")


def test_a_waiting_call_also_stops_the_configured_model_coming_up() -> None:
    issued, finish = run(Node(waiting=f"{API}/inference/up"), work=None)
    assert brought_into_work(issued) == []
    assert finish.carried is False and f"{API}/inference/up" in finish.outcome.detail


def test_a_waiting_call_with_unseen_work_says_what_was_not_carried() -> None:
    """Whatever the old version ran, the detail names work, not the Python value None."""
    _, finish = run(Node(old_state="POW", waiting=f"{API}/pow/init/generate"), work=None)
    assert finish.carried is False and f"{API}/pow/init/generate" in finish.outcome.detail
    assert "None" not in finish.outcome.detail, finish.outcome.detail


def test_unseen_pow_is_not_carried_and_nothing_is_started() -> None:
    issued, finish = run(Node(old_state="POW", pow_status="GENERATING"), work=None)
    assert brought_into_work(issued) == []
    assert hf.ReadState(NEW) not in issued
    assert finish.carried is False and not finish.serving
    assert "parameters are unknown" in finish.outcome.detail
    assert finish.confirmed == (OLD,)  # the old version is still stopped


def test_unseen_training_is_not_carried_either() -> None:
    issued, finish = run(Node(old_state="TRAIN"), work=None)
    assert brought_into_work(issued) == [] and finish.carried is False
    assert "TRAIN" in finish.outcome.detail and "unknown" in finish.outcome.detail


def test_inference_work_brings_up_its_own_model_and_dtype() -> None:
    work = NodeWork(
        kind=WorkKind.INFERENCE,
        model="org/other",
        args=("--tp", "2"),
        dtype="float16",
        route=f"{API}/inference/up",
    )
    issued, finish = run(Node(), work=work)
    assert brought_into_work(issued) == [hf.BringUp(NEW, "org/other", ("--tp", "2"), "float16")]
    assert finish.serving and (finish.work, finish.carried) == ("inference", True)


def test_no_recorded_work_serves_the_configured_model_with_the_default_dtype() -> None:
    issued, finish = run(Node(), work=None)
    assert brought_into_work(issued) == [hf.BringUp(NEW, "configured/model", ("--x", "1"), None)]
    assert finish.serving and finish.work == "inference"


def test_inference_that_does_not_come_up_is_not_carried() -> None:
    node = Node()

    def respond(cmd: hf.Command) -> hf.Observation:
        return hf.Failed("409 GPU busy", 409) if isinstance(cmd, hf.BringUp) else node(cmd)

    _, finish = run(respond, work=None)
    assert finish.outcome.outcome == "failed" and finish.carried is False and finish.work == "stopped"


def test_a_stop_only_handoff_reads_no_work_and_checks_no_waiting_call() -> None:
    issued, finish = run(Node(old_state="POW"), work=GENERATE, target=None, model=None)
    assert issued == [hf.Drain((OLD,), 5), hf.SendStop(OLD), hf.ReadState(OLD)]
    assert finish.work is None and finish.carried is None


def test_an_unreadable_old_version_leaves_the_recorded_work_standing() -> None:
    issued, finish = run(Node(old_state="POW", pow_status="VALIDATING", read_work_fails=True), work=GENERATE)
    assert brought_into_work(issued) == [hf.StartWork(NEW, f"{API}/pow/init/generate", POW_BODY)]
    assert (finish.work, finish.carried) == ("pow_generate", True)


def test_an_unreadable_old_version_without_a_record_serves_the_configured_model() -> None:
    issued, finish = run(Node(read_work_fails=True), work=None)
    assert brought_into_work(issued) == [hf.BringUp(NEW, "configured/model", ("--x", "1"), None)]
    assert finish.serving


def test_the_work_is_read_from_the_first_old_version_only_and_never_from_the_target() -> None:
    issued, _ = run(Node(old_state="POW"), work=GENERATE, stop=(NEW, OLD, OTHER))
    assert [c for c in issued if isinstance(c, hf.ReadWork)] == [hf.ReadWork(OLD)]


def test_a_bring_up_only_handoff_still_carries_the_work() -> None:
    """No version to stop (a node found stopped): the work is still what the API node gave it."""
    issued, finish = run(Node(), work=GENERATE, stop=())
    assert issued == [hf.CheckWaiting(), hf.StartWork(NEW, f"{API}/pow/init/generate", POW_BODY)]
    assert finish.carried is True


# --- any answers --------------------------------------------------------------------------------------

_WORKS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            NodeWork(kind=WorkKind.INFERENCE, model="org/other", args=("--a",), dtype="bfloat16"),
            NodeWork(kind=WorkKind.POW, params=POW_BODY),
            GENERATE,
            NodeWork(kind=WorkKind.POW_VALIDATE, params=POW_BODY),
            NodeWork(kind=WorkKind.TRAIN, params=TRAIN_BODY),
            NodeWork(kind=WorkKind.STOPPED),
        ]
    ),
)
_STATES = st.sampled_from(["INFERENCE", "POW", "TRAIN", "STOPPED"])
_POW_STATUS = st.sampled_from([None, "IDLE", "GENERATING", "VALIDATING", "NOT_LOADED"])


@settings(max_examples=400, deadline=None)
@given(
    work=_WORKS,
    old_state=_STATES,
    pow_status=_POW_STATUS,
    read_fails=st.booleans(),
    waiting=st.sampled_from([None, f"{API}/stop", f"{API}/inference/up", f"{API}/pow/init/generate"]),
    stop=st.lists(st.sampled_from([OLD, NEW, OTHER]), max_size=4).map(tuple),
    answers=st.lists(st.sampled_from(["ok", "fail", "running"]), max_size=30),
    target_state=_STATES,
)
def test_any_answers_never_stop_the_target_and_only_start_work_on_it(
    work: NodeWork | None,
    old_state: str,
    pow_status: str | None,
    read_fails: bool,
    waiting: str | None,
    stop: tuple[MLNodeVersion, ...],
    answers: list[str],
    target_state: str,
) -> None:
    queue = list(answers)

    def answer() -> str:
        return queue.pop(0) if queue else "ok"

    def respond(cmd: hf.Command) -> hf.Observation:
        match cmd:
            case hf.ReadWork(version):
                assert version != NEW, "the work is read from an old version"
                return hf.Failed("away") if read_fails else hf.WorkIs(old_state, pow_status)
            case hf.CheckWaiting():
                return hf.Waiting(waiting)
            case hf.Drain(versions):
                assert NEW not in versions
                return hf.Drained(0)
            case hf.SendStop(version):
                assert version != NEW, "the target is never stopped"
                return hf.Failed("500") if answer() == "fail" else hf.Ok()
            case hf.ReadState(version) if version != NEW:
                return hf.StateIs("INFERENCE" if answer() == "running" else "STOPPED")
            case hf.ReadState():
                return hf.StateIs(target_state)
            case hf.BringUp(version) | hf.StartWork(version) | hf.CheckHealth(version):
                assert version == NEW, f"{type(cmd).__name__} only ever goes to the target"
                return hf.Failed("500") if answer() == "fail" else hf.Ok()
        raise AssertionError(cmd)

    issued, finish = run(respond, work=work, stop=stop)
    olds = {v for v in stop if v != NEW}
    assert set(finish.confirmed) | {v for v, _ in finish.unconfirmed} == olds
    started = brought_into_work(issued)
    if waiting is not None:
        assert started == [] and finish.carried is False and waiting in finish.outcome.detail
    if work is not None and work.kind is WorkKind.STOPPED:
        assert started == [] and not finish.serving
    if work is None and olds and not read_fails and old_state in ("POW", "TRAIN"):
        assert started == [] and finish.carried is False  # unseen work is never guessed at
    if finish.carried:
        assert finish.work is not None and finish.outcome.outcome != "failed"
    assert finish.serving == (finish.work == "inference" and finish.carried is True)
    assert (finish.outcome.work, finish.outcome.carried) == (finish.work, finish.carried)
    assert all(isinstance(c, hf.BringUp) for c in started) or all(
        isinstance(c, hf.StartWork) for c in started
    )
