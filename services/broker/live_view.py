"""The live view of an upgrade: one JSON document for `status --watch` and the status page.

Built by a pure function from what the broker holds (its nodes, the switch record, pending
stops, readiness) and the registry's state (the chain height, the block time, the plans), so
the terminal and the browser show the same thing and neither has to join three services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.broker.models import PendingStop
from services.broker.switch_log import SwitchLog
from services.broker.transition import TransitionRecord
from shared.events import BrokerReadiness
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

__all__ = ["LiveNode", "history", "live_view"]


@dataclass(frozen=True, slots=True)
class LiveNode:
    node_id: str
    version: MLNodeVersion | None
    ready: bool
    phase: str
    phase_since: float
    in_flight: int


def _pending(state: RegistryState | None, height: int | None, block_time_s: float | None) -> list[Any]:
    if state is None:
        return []
    plans = []
    for plan in sorted(state.pending, key=lambda p: p.height):
        left = None if height is None else plan.height - height
        plans.append(
            {
                "height": plan.height,
                "node_version": plan.node_version.raw,
                "name": plan.name,
                "blocks_left": left,
                "seconds_left": None
                if left is None or block_time_s is None
                else round(max(left, 0) * block_time_s, 1),
            }
        )
    return plans


def live_view(
    *,
    now: float,
    state: RegistryState | None,
    current: MLNodeVersion | None,
    nodes: Sequence[LiveNode],
    record: TransitionRecord | None,
    readiness: BrokerReadiness | None,
    pending_stops: Sequence[PendingStop],
    stops_retried: int,
    held: int,
    served: Mapping[MLNodeVersion, int],
    in_flight: Mapping[MLNodeVersion, int],
) -> dict[str, Any]:
    """The document `GET /upgrade/live` answers; pure."""
    height = state.last_height if state is not None and state.last_height else None
    block_time_s = state.block_time_s if state is not None else None
    outcomes = record.outcomes if record is not None else {}
    in_switch = set(record.nodes) if record is not None else set()
    switch = None
    if record is not None:
        end = record.finished_at if record.finished_at is not None else now
        switch = {
            "transition_id": record.transition_id,
            "previous": record.previous.raw if record.previous else None,
            "target": record.target.raw,
            "height": record.height,
            "reason": record.reason,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "elapsed_s": round(max(end - record.started_at, 0.0), 3),
            "complete": record.complete,
            "remaining": list(record.remaining),
        }
    readiness_doc = None
    planned = {p.node_version for p in state.pending} if state is not None else None
    # The last probe's report, while its plan is still ahead (after the height it is history).
    if readiness is not None and (planned is None or readiness.target_version in planned):
        readiness_doc = readiness.model_dump(mode="json")
        readiness_doc["all_ready"] = all(n.ready for n in readiness.nodes)
    return {
        "at": now,
        "chain": {"height": height, "block_time_s": block_time_s},
        "current_version": current.raw if current else None,
        "last_used_version": state.last_used_version.raw
        if state is not None and state.last_used_version
        else None,
        "rollback_active": bool(state and state.rollback_active),
        "pending": _pending(state, height, block_time_s),
        "readiness": readiness_doc,
        "nodes": [
            {
                "id": n.node_id,
                "version": n.version.raw if n.version else None,
                "ready": n.ready,
                "phase": n.phase,
                "phase_for_s": round(max(now - n.phase_since, 0.0), 1),
                "in_flight": n.in_flight,
                "outcome": outcomes[n.node_id].outcome if n.node_id in outcomes else None,
                "detail": outcomes[n.node_id].detail if n.node_id in outcomes else "",
                "in_switch": n.node_id in in_switch,
            }
            for n in nodes
        ],
        "requests": {
            "held": held,
            "served": {v.raw: c for v, c in sorted(served.items(), key=lambda kv: kv[0].raw)},
            "in_flight": {v.raw: c for v, c in sorted(in_flight.items(), key=lambda kv: kv[0].raw) if c},
        },
        "stops": {
            "pending": [p.model_dump(mode="json") for p in pending_stops],
            "retried": stops_retried,
        },
        "switch": switch,
        "result": record.result if record is not None else None,
    }


def history(log: SwitchLog, limit: int) -> dict[str, Any]:
    """The document `GET /upgrade/history` answers, newest switch first; pure."""
    switches = []
    for s in reversed(log.switches[-limit:]):
        doc = s.model_dump(mode="json")
        doc["handover_s"] = s.handover_s
        switches.append(doc)
    return {"switches": switches}
