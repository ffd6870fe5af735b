"""The per-node handoff as a pure state machine: data in, the next command out, no I/O.

One handoff moves one node to `target`:

    drain the old versions' in-flight work (bounded)
    → for each old version: POST stop (retried with backoff) → GET state must say STOPPED
    → GET state of the target: INFERENCE means it is up already (a resumed handoff), else inference/up
    → GET the target's /v1/models until its model answers (bounded) → finished

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
from typing import Literal, NamedTuple

from shared.events import NodeOutcome
from shared.versions import MLNodeVersion

__all__ = [
    "BringUp",
    "CheckHealth",
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
    "SendStop",
    "StateIs",
    "UnconfirmedStop",
    "Wait",
    "Woke",
    "advance",
    "start",
]

STOPPED = "STOPPED"
INFERENCE = "INFERENCE"
MAX_DETAIL = 2000


class UnconfirmedStop(NamedTuple):
    """A stop the handoff gave up confirming, and the last error: it becomes a pending stop."""

    version: MLNodeVersion
    error: str


class Phase(enum.StrEnum):
    DRAIN = "drain"
    STOP = "stop"
    CONFIRM = "confirm_stopped"
    PROBE = "probe_target"
    BRING_UP = "bring_up"
    WAIT_HEALTHY = "wait_healthy"
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

    def __post_init__(self) -> None:
        if self.stop_attempts < 1 or self.up_attempts < 1:
            raise ValueError("stop_attempts and up_attempts must be at least 1")

    def stop_backoff(self, failures: int) -> float:
        """Exponential: base, 2*base, 4*base, ... capped."""
        return float(min(self.stop_backoff_s * 2 ** max(failures - 1, 0), self.stop_backoff_max_s))


# --- commands: what the caller must do next -----------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class CheckHealth:
    version: MLNodeVersion


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The handoff is over. `serving` says the target answers; `unconfirmed` are stops to keep retrying."""

    outcome: NodeOutcome
    serving: bool
    confirmed: tuple[MLNodeVersion, ...]
    unconfirmed: tuple[UnconfirmedStop, ...]


Command = Drain | SendStop | ReadState | BringUp | CheckHealth | Wait | Finish


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


Observation = Drained | Ok | StateIs | Failed | Woke


# --- the handoff ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handoff:
    node_id: str
    target: MLNodeVersion | None
    model: tuple[str, tuple[str, ...]] | None
    policy: HandoffPolicy
    phase: Phase
    to_stop: tuple[MLNodeVersion, ...] = ()  # the head is the one being stopped now
    confirmed: tuple[MLNodeVersion, ...] = ()
    unconfirmed: tuple[UnconfirmedStop, ...] = ()
    failures: int = 0  # failed attempts of the current step
    phase_since: float = 0.0
    drain_cut: int = 0  # requests still in flight when the drain gave up
    up_error: str = ""
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
) -> tuple[Handoff, Command]:
    """A new handoff and its first command. The target is removed from `stop`, whatever the caller said."""
    to_stop = tuple(dict.fromkeys(v for v in stop if v != target))
    h = Handoff(node_id, target, model, policy, Phase.DRAIN, to_stop=to_stop, phase_since=now)
    if to_stop:
        return h, Drain(to_stop, policy.drain_timeout_s)
    return _after_stops(h, now)


def advance(h: Handoff, obs: Observation, now: float) -> tuple[Handoff, Command]:
    """The next state and command, given what the last command observed."""
    if isinstance(obs, Woke):
        if h.after_wait is None:
            raise ValueError(f"woke in phase {h.phase} with nothing to resume")
        return replace(h, after_wait=None), h.after_wait
    match h.phase:
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
        case Phase.PROBE:
            if isinstance(obs, StateIs) and obs.state == INFERENCE:
                return _enter(h, Phase.WAIT_HEALTHY, now), CheckHealth(_target(h))
            if isinstance(obs, StateIs | Failed):
                return _bring_up(h, now)
        case Phase.BRING_UP:
            if isinstance(obs, Ok):
                return _enter(h, Phase.WAIT_HEALTHY, now), CheckHealth(_target(h))
            if isinstance(obs, Failed):
                failures = h.failures + 1
                h = replace(h, failures=failures, up_error=f"inference/up: {obs.error}")
                if failures >= h.policy.up_attempts:
                    return _finish(h)
                # Re-probe first: a 409 can mean a load is already under way.
                h = replace(h, phase=Phase.PROBE, after_wait=ReadState(_target(h)))
                return h, Wait(h.policy.up_backoff_s * failures)
        case Phase.WAIT_HEALTHY:
            if isinstance(obs, Ok):
                return _finish(replace(h, up_error=""))
            if isinstance(obs, Failed):
                waited = now - h.phase_since
                if waited >= h.policy.health_timeout_s:
                    return _finish(replace(h, up_error=f"not healthy after {waited:.1f}s: {obs.error}"))
                h = replace(h, after_wait=CheckHealth(_target(h)))
                return h, Wait(h.policy.health_interval_s)
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
    return _enter(h, Phase.PROBE, now), ReadState(h.target)


def _bring_up(h: Handoff, now: float) -> tuple[Handoff, Command]:
    if h.model is None:
        return _finish(replace(h, up_error="the node has no model configured; nothing to bring up"))
    name, args = h.model
    return _enter(h, Phase.BRING_UP, now, keep_failures=True), BringUp(_target(h), name, args)


def _finish(h: Handoff) -> tuple[Handoff, Finish]:
    h = replace(h, phase=Phase.DONE, after_wait=None)
    serving = h.target is not None and not h.up_error
    parts: list[str] = []
    for version, error in h.unconfirmed:
        parts.append(f"stop of {version} not confirmed: {error}")
    if h.up_error:
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
    return h, Finish(
        NodeOutcome(node_id=h.node_id, outcome=outcome, detail=detail),
        serving=serving,
        confirmed=h.confirmed,
        unconfirmed=h.unconfirmed,
    )
