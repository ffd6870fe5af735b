"""The per-node handoff as a pure state machine: data in, the next command out, no I/O.

One handoff moves one node to `target`:

    read what the old version is doing (`state`, and `pow/status` in POW)
    → drain the old versions' in-flight work (bounded)
    → for each old version: POST stop (retried with backoff) → GET state must say STOPPED
    → an API node's call waiting for the node takes over from here (its work runs next, as it asked)
    → bring the target into the node's work (`node_work.carry_for`):
        serving a model: inference/up → GET the target's /v1/models until it answers (bounded);
            a 409 from inference/up means a load is under way or done (a resumed handoff): GET
            state of the target says which, INFERENCE going straight to the /v1/models check;
            with nothing stopped first (upkeep, a new node) the target's state is read before
            inference/up instead, as it may well serve already;
        PoC or training: POST its init (or train/start) again with the API node's own body;
        stopped: nothing (no `inference/up` the API node did not ask for)
    → finished

Every answer that is not a confirmation is a failure: a 404 or 500 from stop is retried, never
taken as success (the real client's mistake), and the stop only counts once the old version
itself reports STOPPED. A stop that cannot be confirmed does not hold the node hostage: the
handoff goes on to bring the target up (a dead old version holds no GPU) and reports the stop as
pending, so the caller keeps retrying it. The target is never stopped: it is excluded from the
versions to stop at the start and nothing later adds to that list.

The same machine does the two smaller jobs: `target=None` only stops (retrying a pending stop),
no versions to stop only brings the target up (a new node, or a node found stopped).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from services.broker.node_work import (
    CannotCarry,
    Carry,
    NodeWork,
    Reinit,
    Serve,
    StayStopped,
    carry_for,
    refine,
    unseen_work,
    work_label,
)
from shared.events import NodeOutcome
from shared.versions import MLNodeVersion

__all__ = [
    "BringUp",
    "CheckHealth",
    "CheckWaiting",
    "Command",
    "Drain",
    "Drained",
    "Failed",
    "Finish",
    "Handoff",
    "HandoffPolicy",
    "Observation",
    "Ok",
    "Phase",
    "ReadState",
    "ReadWork",
    "SendStop",
    "StartWork",
    "StateIs",
    "UnconfirmedStop",
    "Wait",
    "Waiting",
    "Woke",
    "WorkIs",
    "advance",
    "start",
]

STOPPED = "STOPPED"
INFERENCE = "INFERENCE"
CONFLICT = 409
MAX_DETAIL = 2000


class UnconfirmedStop(NamedTuple):
    """A stop the handoff gave up confirming, and the last error: it becomes a pending stop."""

    version: MLNodeVersion
    error: str


class Phase(enum.StrEnum):
    OBSERVE = "observe_work"
    DRAIN = "drain"
    STOP = "stop"
    CONFIRM = "confirm_stopped"
    CLAIMS = "check_waiting"
    PROBE = "probe_target"
    BRING_UP = "bring_up"
    WAIT_HEALTHY = "wait_healthy"
    START_WORK = "start_work"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class HandoffPolicy:
    """The bounds of one handoff. Times are seconds."""

    drain_timeout_s: float = 30.0
    stop_attempts: int = 5
    stop_backoff_s: float = 0.5
    stop_backoff_max_s: float = 8.0
    up_attempts: int = 3
    up_backoff_s: float = 1.0
    health_timeout_s: float = 120.0
    health_interval_s: float = 0.25
    # Reading what the old version runs only informs the handoff: a frozen old version must not
    # hold up the stop and the new version for long.
    observe_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.stop_attempts < 1 or self.up_attempts < 1:
            raise ValueError("stop_attempts and up_attempts must be at least 1")

    def stop_backoff(self, failures: int) -> float:
        """Exponential: base, 2*base, 4*base, ... capped."""
        return float(min(self.stop_backoff_s * 2 ** max(failures - 1, 0), self.stop_backoff_max_s))


# --- commands: what the caller must do next -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadWork:
    """GET state of the old version, and pow/status when it says POW."""

    version: MLNodeVersion


@dataclass(frozen=True, slots=True)
class CheckWaiting:
    """Is a management call of the API node waiting for this node's turn?"""


@dataclass(frozen=True, slots=True)
class Drain:
    """Wait until no forwarded request is in flight on these versions of the node, or the timeout."""

    versions: tuple[MLNodeVersion, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class SendStop:
    version: MLNodeVersion


@dataclass(frozen=True, slots=True)
class ReadState:
    version: MLNodeVersion


@dataclass(frozen=True, slots=True)
class BringUp:
    version: MLNodeVersion
    model: str
    args: tuple[str, ...]
    dtype: str | None = None  # None: the broker's configured dtype


@dataclass(frozen=True, slots=True)
class StartWork:
    """POST `route` on the target with the API node's own body (PoC init, train/start)."""

    version: MLNodeVersion
    route: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CheckHealth:
    version: MLNodeVersion


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The handoff is over. `serving` says the target answers; `unconfirmed` are stops to keep retrying.

    `work` is what the target does now (a `WorkKind` value) and `carried` whether that is the
    node's work from before the switch (None when there was nothing to carry).
    """

    outcome: NodeOutcome
    serving: bool
    confirmed: tuple[MLNodeVersion, ...]
    unconfirmed: tuple[UnconfirmedStop, ...]
    load_s: float | None = None  # the measured model load, when this handoff loaded one
    stop_calls: int = 0  # stop calls sent, retries included
    stop_s: float | None = None  # from the first stop call to the last stop confirmed or given up

    @property
    def work(self) -> str | None:
        return self.outcome.work

    @property
    def carried(self) -> bool | None:
        return self.outcome.carried


Command = (
    ReadWork | Drain | SendStop | ReadState | CheckWaiting | BringUp | StartWork | CheckHealth | Wait | Finish
)


# --- observations: what happened ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drained:
    remaining: int  # requests still in flight when the drain timed out (0: drained)


@dataclass(frozen=True, slots=True)
class Ok:
    """The call succeeded (2xx; for health: healthy)."""


@dataclass(frozen=True, slots=True)
class StateIs:
    state: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The call failed: transport error, timeout, non-2xx, or an unhealthy answer."""

    error: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Woke:
    pass


@dataclass(frozen=True, slots=True)
class WorkIs:
    state: str
    pow_status: str | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    """The route of the API node's call waiting for the node, or None."""

    route: str | None


Observation = Drained | Ok | StateIs | Failed | Woke | WorkIs | Waiting


# --- the handoff ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handoff:
    node_id: str
    target: MLNodeVersion | None
    model: tuple[str, tuple[str, ...]] | None  # the node config's model: served when no work is known
    policy: HandoffPolicy
    phase: Phase
    to_stop: tuple[MLNodeVersion, ...] = ()  # the head is the one being stopped now
    confirmed: tuple[MLNodeVersion, ...] = ()
    unconfirmed: tuple[UnconfirmedStop, ...] = ()
    failures: int = 0  # failed attempts of the current step
    phase_since: float = 0.0
    drain_cut: int = 0  # requests still in flight when the drain gave up
    up_error: str = ""
    up_since: float | None = None  # when the last inference/up was sent: the load is timed from it
    load_s: float | None = None  # how long the model took to serve, when this handoff loaded it
    work: NodeWork | None = None  # what the API node gave the node to do (None: never said)
    carry: Carry | None = None  # decided after the stops
    not_carried: str = ""  # why the node's work was not carried, when it was not
    conflict: bool = False  # inference/up answered 409 and the target's state is being read
    stop_calls: int = 0  # what the stops needed, for the switch history
    stop_started: float | None = None
    stop_s: float | None = None
    after_wait: Command | None = field(default=None, compare=False)

    @property
    def stopping(self) -> MLNodeVersion:
        return self.to_stop[0]


def start(
    node_id: str,
    target: MLNodeVersion | None,
    stop: tuple[MLNodeVersion, ...],
    model: tuple[str, tuple[str, ...]] | None,
    policy: HandoffPolicy,
    now: float,
    work: NodeWork | None = None,
) -> tuple[Handoff, Command]:
    """A new handoff and its first command. The target is removed from `stop`, whatever the caller said."""
    to_stop = tuple(dict.fromkeys(v for v in stop if v != target))
    h = Handoff(node_id, target, model, policy, Phase.DRAIN, to_stop=to_stop, phase_since=now, work=work)
    if to_stop and target is not None:
        return replace(h, phase=Phase.OBSERVE), ReadWork(h.stopping)
    if to_stop:
        return h, Drain(to_stop, policy.drain_timeout_s)
    return _after_stops(h, now)


def advance(h: Handoff, obs: Observation, now: float) -> tuple[Handoff, Command]:
    """The next state and command, given what the last command observed."""
    return _count_stops(*_advance(h, obs, now), now)


def _count_stops(h: Handoff, cmd: Command, now: float) -> tuple[Handoff, Command]:
    """Count the stop calls and time the stops, whatever path led to them."""
    if isinstance(cmd, SendStop):
        started = now if h.stop_started is None else h.stop_started
        h = replace(h, stop_calls=h.stop_calls + 1, stop_started=started)
    elif h.stop_started is not None and h.stop_s is None and not h.to_stop:
        h = replace(h, stop_s=now - h.stop_started)
        if isinstance(cmd, Finish):
            cmd = replace(cmd, stop_calls=h.stop_calls, stop_s=h.stop_s)
    return h, cmd


def _advance(h: Handoff, obs: Observation, now: float) -> tuple[Handoff, Command]:
    if isinstance(obs, Woke):
        if h.after_wait is None:
            raise ValueError(f"woke in phase {h.phase} with nothing to resume")
        return replace(h, after_wait=None), h.after_wait
    match h.phase:
        case Phase.OBSERVE:
            if isinstance(obs, WorkIs):
                unseen = unseen_work(h.work, obs.state)
                h = replace(h, work=refine(h.work, obs.state, obs.pow_status))
                if unseen:
                    h = replace(h, carry=CannotCarry(unseen))
            elif not isinstance(obs, Failed):  # unreadable: the recorded work stands
                raise _unexpected(h, obs)
            return _enter(h, Phase.DRAIN, now), Drain(h.to_stop, h.policy.drain_timeout_s)
        case Phase.DRAIN:
            if not isinstance(obs, Drained):
                raise _unexpected(h, obs)
            return _enter(h, Phase.STOP, now, drain_cut=obs.remaining), SendStop(h.stopping)
        case Phase.STOP:
            if isinstance(obs, Ok):
                return _enter(h, Phase.CONFIRM, now, keep_failures=True), ReadState(h.stopping)
            if isinstance(obs, Failed):
                return _stop_failed(h, f"POST stop: {obs.error}", now)
        case Phase.CONFIRM:
            if isinstance(obs, StateIs) and obs.state == STOPPED:
                h = replace(h, confirmed=(*h.confirmed, h.stopping), to_stop=h.to_stop[1:], failures=0)
                return _next_stop(h, now)
            if isinstance(obs, StateIs):
                return _stop_failed(h, f"stop answered OK but state is {obs.state}", now)
            if isinstance(obs, Failed):
                return _stop_failed(h, f"GET state after stop: {obs.error}", now)
        case Phase.CLAIMS:
            if isinstance(obs, Waiting) and obs.route is not None:
                carry = h.carry or carry_for(h.work, h.model)
                what = work_label(carry) or "work"
                reason = f"the API node's {obs.route} was waiting for the node and runs next"
                return _finish(replace(h, carry=carry, not_carried=f"{what} not carried: {reason}"))
            if isinstance(obs, Waiting):
                return _into_work(h, now)
        case Phase.PROBE:
            if isinstance(obs, StateIs) and obs.state == INFERENCE:
                return _enter(h, Phase.WAIT_HEALTHY, now), CheckHealth(_target(h))
            if isinstance(obs, StateIs | Failed):
                if h.conflict:  # probed at once after a 409: the backoff is still owed
                    h = replace(h, conflict=False)
                    return _bring_up_after(h, h.policy.up_backoff_s * h.failures)
                return _bring_up(h, now)
        case Phase.BRING_UP:
            if isinstance(obs, Ok):
                return _enter(h, Phase.WAIT_HEALTHY, now), CheckHealth(_target(h))
            if isinstance(obs, Failed):
                failures = h.failures + 1
                h = replace(h, failures=failures, up_error=f"inference/up: {obs.error}")
                if failures >= h.policy.up_attempts:
                    return _finish(h)
                if obs.status == CONFLICT:  # a load under way or done: look at once
                    return replace(h, phase=Phase.PROBE, conflict=True, up_since=None), ReadState(_target(h))
                h = replace(h, phase=Phase.PROBE, after_wait=ReadState(_target(h)))
                return h, Wait(h.policy.up_backoff_s * failures)
        case Phase.WAIT_HEALTHY:
            if isinstance(obs, Ok):
                load_s = None if h.up_since is None else round(now - h.up_since, 3)
                return _finish(replace(h, up_error="", load_s=load_s))
            if isinstance(obs, Failed):
                waited = now - h.phase_since
                if waited >= h.policy.health_timeout_s:
                    return _finish(replace(h, up_error=f"not healthy after {waited:.1f}s: {obs.error}"))
                h = replace(h, after_wait=CheckHealth(_target(h)))
                return h, Wait(h.policy.health_interval_s)
        case Phase.START_WORK:
            reinit = h.carry
            assert isinstance(reinit, Reinit)
            if isinstance(obs, Ok):
                return _finish(replace(h, up_error=""))
            if isinstance(obs, Failed):
                failures = h.failures + 1
                h = replace(h, failures=failures, up_error=f"{reinit.route}: {obs.error}")
                if failures >= h.policy.up_attempts:
                    return _finish(replace(h, not_carried=f"{reinit.kind} not carried: {h.up_error}"))
                h = replace(h, after_wait=_start_work(h))
                return h, Wait(h.policy.up_backoff_s * failures)
        case Phase.DONE:
            pass
    raise _unexpected(h, obs)


# --- helpers ----------------------------------------------------------------------------------------


def _unexpected(h: Handoff, obs: Observation) -> ValueError:
    return ValueError(f"handoff of {h.node_id}: {type(obs).__name__} is not expected in phase {h.phase}")


def _target(h: Handoff) -> MLNodeVersion:
    assert h.target is not None
    return h.target


def _enter(
    h: Handoff, phase: Phase, now: float, *, keep_failures: bool = False, drain_cut: int | None = None
) -> Handoff:
    return replace(
        h,
        phase=phase,
        phase_since=now,
        failures=h.failures if keep_failures else 0,
        drain_cut=h.drain_cut if drain_cut is None else drain_cut,
    )


def _stop_failed(h: Handoff, error: str, now: float) -> tuple[Handoff, Command]:
    failures = h.failures + 1
    if failures < h.policy.stop_attempts:
        h = replace(h, phase=Phase.STOP, failures=failures, after_wait=SendStop(h.stopping))
        return h, Wait(h.policy.stop_backoff(failures))
    error = f"{error} (after {failures} attempts)"
    h = replace(
        h,
        unconfirmed=(*h.unconfirmed, UnconfirmedStop(h.stopping, error[:MAX_DETAIL])),
        to_stop=h.to_stop[1:],
        failures=0,
    )
    return _next_stop(h, now)


def _next_stop(h: Handoff, now: float) -> tuple[Handoff, Command]:
    if h.to_stop:
        return _enter(h, Phase.STOP, now), SendStop(h.stopping)
    return _after_stops(h, now)


def _after_stops(h: Handoff, now: float) -> tuple[Handoff, Command]:
    if h.target is None:
        return _finish(h)
    return _enter(h, Phase.CLAIMS, now), CheckWaiting()


def _into_work(h: Handoff, now: float) -> tuple[Handoff, Command]:
    """Bring the target into the node's work (no API node call is waiting to set another)."""
    carry = h.carry or carry_for(h.work, h.model)
    h = replace(h, carry=carry)
    match carry:
        case Serve():
            if h.confirmed or h.unconfirmed:
                # A switch that just stopped the old version: the target does not run (or, for
                # a resumed handoff, inference/up answers 409), so no state read first.
                return _bring_up(h, now)
            # Nothing was stopped (upkeep, a new node): the target may well serve already.
            return _enter(h, Phase.PROBE, now), ReadState(_target(h))
        case Reinit():
            h = _enter(h, Phase.START_WORK, now)
            return h, _start_work(h)
        case StayStopped():
            return _finish(h)
        case CannotCarry(reason):
            return _finish(replace(h, not_carried=f"work not carried: {reason}"))
    return _finish(replace(h, up_error="the node has no model configured; nothing to bring up"))


def _start_work(h: Handoff) -> StartWork:
    assert isinstance(h.carry, Reinit)
    return StartWork(_target(h), h.carry.route, h.carry.body)


def _bring_up(h: Handoff, now: float) -> tuple[Handoff, Command]:
    assert isinstance(h.carry, Serve)
    carry = h.carry
    h = replace(h, up_since=now)
    return _enter(h, Phase.BRING_UP, now, keep_failures=True), BringUp(
        _target(h), carry.model, carry.args, carry.dtype
    )


def _bring_up_after(h: Handoff, seconds: float) -> tuple[Handoff, Command]:
    """Wait, then send inference/up again (that load is not timed: its start is not seen here)."""
    assert isinstance(h.carry, Serve)
    carry = h.carry
    up = BringUp(_target(h), carry.model, carry.args, carry.dtype)
    return replace(h, phase=Phase.BRING_UP, after_wait=up, up_since=None), Wait(seconds)


def _finish(h: Handoff) -> tuple[Handoff, Finish]:
    h = replace(h, phase=Phase.DONE, after_wait=None)
    serving = h.target is not None and isinstance(h.carry, Serve) and not h.up_error and not h.not_carried
    parts: list[str] = []
    for version, error in h.unconfirmed:
        parts.append(f"stop of {version} not confirmed: {error}")
    if h.not_carried:
        parts.append(h.not_carried)
    elif h.up_error:
        parts.append(f"{h.target} not serving: {h.up_error}")
    if h.drain_cut:
        parts.append(f"drain timed out with {h.drain_cut} request(s) in flight")
    outcome: Literal["ready", "stop_pending", "failed"]
    if h.unconfirmed:
        outcome = "stop_pending"
    elif h.up_error:
        outcome = "failed"
    else:
        outcome = "ready"
    detail = "; ".join(parts)[:MAX_DETAIL]
    # What the target does now, and whether that is the node's work carried over.
    work: str | None = None
    carried: bool | None = None
    if h.target is not None and h.carry is not None:
        carried = not h.not_carried and not h.up_error
        work = work_label(h.carry) if carried else "stopped"
    return h, Finish(
        NodeOutcome(node_id=h.node_id, outcome=outcome, detail=detail, work=work, carried=carried),
        serving=serving,
        confirmed=h.confirmed,
        unconfirmed=h.unconfirmed,
        load_s=h.load_s,
        stop_calls=h.stop_calls,
        stop_s=h.stop_s,
    )
