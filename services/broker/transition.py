"""One version switch across all nodes, as persisted data plus pure decisions about it.

The record is written to KV before any node is touched and after every node's outcome, so a
broker killed at any point resumes the same switch: it knows the target (never stopped), the
versions to stop, which nodes are done, and whether `broker.refreshed` went out.

Where a switch comes from does not matter: a `version.changed` event, the registry's state at
start-up (current != last_used: hand over FROM last_used), or the periodic reconcile. All three
become a `Change`, and `decide` says whether it is new, the one in progress, or stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.events import BrokerRefreshed, NodeOutcome, VersionChanged
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

__all__ = [
    "SEEN_MEMORY",
    "Change",
    "Decision",
    "NodeStops",
    "TransitionRecord",
    "begin",
    "change_from_event",
    "change_from_registry",
    "decide",
]

SEEN_MEMORY = 64  # earlier transition ids remembered, so a redelivered old event is recognised


@dataclass(frozen=True, slots=True)
class Change:
    """A request to make `current` the version every node serves."""

    transition_id: str
    previous: MLNodeVersion | None
    current: MLNodeVersion
    height: int = 0
    reason: str = "plan"


class NodeStops(BaseModel):
    """What a node's stops needed in a switch: the calls sent (retries included) and how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: int = 0
    seconds: float | None = None


class TransitionRecord(BaseModel):
    """The switch in progress (or the last one finished), persisted under one KV key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transition_id: str
    target: MLNodeVersion
    previous: MLNodeVersion | None = None  # as the change named it, for broker.refreshed
    stop: tuple[MLNodeVersion, ...] = ()  # every version to stop; never contains target
    height: int = 0
    reason: str = "plan"
    nodes: tuple[str, ...] = ()  # the nodes in scope when the switch began
    outcomes: dict[str, NodeOutcome] = {}
    stops: dict[str, NodeStops] = {}  # per node, with its outcome; only where a stop was sent
    started_at: float = 0.0
    finished_at: float | None = None
    refreshed_published: bool = False
    seen: tuple[str, ...] = ()  # earlier transitions, newest last

    @property
    def complete(self) -> bool:
        return len(self.outcomes) >= len(self.nodes) and all(n in self.outcomes for n in self.nodes)

    @property
    def remaining(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.outcomes)

    @property
    def result(self) -> Literal["running", "done", "failed", "stop_pending"]:
        """Still running, or how it ended: a failed node wins over a stop left pending."""
        if not self.complete:
            return "running"
        outcomes = {o.outcome for o in self.outcomes.values()}
        if "failed" in outcomes:
            return "failed"
        return "stop_pending" if "stop_pending" in outcomes else "done"

    @property
    def needs_publish(self) -> bool:
        return self.complete and not self.refreshed_published

    def with_outcome(
        self, outcome: NodeOutcome, now: float, stops: NodeStops | None = None
    ) -> TransitionRecord:
        """Record one node's outcome; the first outcome per node wins (a replay changes nothing)."""
        if outcome.node_id not in self.nodes or outcome.node_id in self.outcomes:
            return self
        update: dict[str, object] = {"outcomes": {**self.outcomes, outcome.node_id: outcome}}
        if stops is not None and stops.calls:
            update["stops"] = {**self.stops, outcome.node_id: stops}
        record = self.model_copy(update=update)
        if record.complete and record.finished_at is None:
            record = record.model_copy(update={"finished_at": now})
        return record

    def published(self) -> TransitionRecord:
        return self.model_copy(update={"refreshed_published": True})

    def refreshed_event(self) -> BrokerRefreshed:
        return BrokerRefreshed(
            transition_id=self.transition_id,
            version=self.target,
            previous=self.previous,
            nodes=tuple(self.outcomes[n] for n in self.nodes if n in self.outcomes),
        )


def change_from_event(event: VersionChanged) -> Change:
    return Change(event.transition_id, event.previous, event.current, event.height, event.reason)


def change_from_registry(state: RegistryState, record: TransitionRecord | None) -> Change | None:
    """What the registry's view asks of the broker, if anything.

    current != last_used: hand over FROM last_used (so the old version gets the stop, never the
    new one). Otherwise the registry has nothing pending; only a broker whose own record aims at
    another version (a switch it never heard of) has to move.
    """
    current = state.current_version
    if current is None:
        return None
    tid = state.current_transition or f"sync-{current}"
    if state.handoff_needed:
        return Change(tid, state.last_used_version, current, state.last_height, "sync")
    if record is not None and record.target != current:
        return Change(tid, record.target, current, state.last_height, "sync")
    return None


Decision = Literal["start", "resume", "ignore"]


def decide(record: TransitionRecord | None, change: Change) -> Decision:
    """`start` a new switch, `resume` the recorded one, or `ignore` a stale or finished one."""
    if record is None:
        return "start"
    if change.transition_id == record.transition_id:
        if change.current != record.target:
            return "start"  # same id, other version: the registry's word is newer than ours
        return "ignore" if record.complete else "resume"
    if change.transition_id in record.seen:
        return "ignore"
    return "start"


def begin(
    record: TransitionRecord | None, change: Change, node_ids: tuple[str, ...], now: float
) -> TransitionRecord:
    """The record of a new switch; it supersedes `record`.

    Versions to stop: the change's previous, plus what the broker itself may have left running
    (the last target, and the stops of a switch cut short), minus the new target.
    """
    candidates: list[MLNodeVersion | None] = [change.previous]
    seen: tuple[str, ...] = ()
    if record is not None:
        candidates.append(record.target)
        if not record.complete:
            candidates.extend(record.stop)
        seen = (*record.seen, record.transition_id)[-SEEN_MEMORY:]
    stop = tuple(dict.fromkeys(v for v in candidates if v is not None and v != change.current))
    return TransitionRecord(
        transition_id=change.transition_id,
        target=change.current,
        previous=change.previous,
        stop=stop,
        height=change.height,
        reason=change.reason,
        nodes=node_ids,
        started_at=now,
        seen=tuple(s for s in seen if s != change.transition_id),
    )
