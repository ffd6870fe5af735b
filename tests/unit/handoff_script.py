"""Drives the pure handoff machine with scripted answers: the versions, the policy, the loop."""

from __future__ import annotations

from collections.abc import Callable

from services.broker import handoff as hf
from services.broker.handoff import HandoffPolicy, Phase
from services.broker.node_work import NodeWork
from shared.versions import MLNodeVersion

OLD = MLNodeVersion("v3.0.6")
NEW = MLNodeVersion("v3.0.8")
OTHER = MLNodeVersion("v3.0.7")
POLICY = HandoffPolicy(
    drain_timeout_s=5,
    stop_attempts=3,
    stop_backoff_s=1,
    stop_backoff_max_s=3,
    up_attempts=2,
    up_backoff_s=1,
    health_timeout_s=10,
    health_interval_s=1,
)

Responder = Callable[[hf.Command], hf.Observation]


def run(
    respond: Responder,
    *,
    model: tuple[str, tuple[str, ...]] | None,
    work: NodeWork | None = None,
    stop: tuple[MLNodeVersion, ...] = (OLD,),
    target: MLNodeVersion | None = NEW,
    policy: HandoffPolicy = POLICY,
) -> tuple[list[hf.Command], hf.Finish]:
    """Drive one handoff to the end; a Wait advances the fake clock. Returns the commands issued."""
    now = 0.0
    h, cmd = hf.start("node-1", target, stop, model, policy, now, work=work)
    issued: list[hf.Command] = []
    while not isinstance(cmd, hf.Finish):
        issued.append(cmd)
        assert len(issued) < 200, "the handoff did not terminate"
        if isinstance(cmd, hf.Wait):
            now += cmd.seconds
            obs: hf.Observation = hf.Woke()
        else:
            obs = respond(cmd)
        h, cmd = hf.advance(h, obs, now)
    assert h.phase is Phase.DONE
    return issued, cmd
