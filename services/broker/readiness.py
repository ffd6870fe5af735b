"""Before a scheduled switch: can every node serve the target version? Pure evaluation of probes.

The real broker only logged a warning here and never looked at health; a node whose proxy had
no route for the new version then failed its requests after the height. Probing both the
management state and the health of the target on every node, and reporting per node, makes that
visible before the height.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.events import BrokerReadiness, NodeReadiness
from shared.registry_api import PendingPlan, RegistryState

__all__ = ["KNOWN_STATES", "Probe", "evaluate", "next_plan", "report"]

KNOWN_STATES = frozenset({"STOPPED", "INFERENCE", "POW", "TRAIN"})


@dataclass(frozen=True, slots=True)
class Probe:
    """What `GET /{v}/api/v1/state` and `GET /{v}/health` answered; an error string when they failed."""

    node_id: str
    state: str | None = None
    state_error: str = ""
    health_error: str = ""


def next_plan(state: RegistryState) -> PendingPlan | None:
    """The earliest pending plan that changes the version: the one to get ready for."""
    plans = sorted(
        (p for p in state.pending if p.node_version != state.current_version), key=lambda p: p.height
    )
    return plans[0] if plans else None


def evaluate(probe: Probe) -> NodeReadiness:
    reasons: list[str] = []
    if probe.state_error:
        reasons.append(probe.state_error)
    elif probe.state not in KNOWN_STATES:
        reasons.append(f"state answered {probe.state!r}, not an MLNode state")
    if probe.health_error:
        reasons.append(probe.health_error)
    return NodeReadiness(node_id=probe.node_id, ready=not reasons, reason="; ".join(reasons)[:2000])


def report(plan: PendingPlan, probes: Iterable[Probe]) -> BrokerReadiness:
    nodes = tuple(sorted((evaluate(p) for p in probes), key=lambda n: n.node_id))
    return BrokerReadiness(target_version=plan.node_version, height=plan.height, nodes=nodes)
