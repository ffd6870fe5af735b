"""The broker's history of switches: how long each handover took and what each node's stop needed.

The registry's history says which switch happened and why (height, reason, actor); only the
broker knows how the handover went. A finished (or superseded) switch record is summarised here,
under its own KV key, and a stop that was confirmed only later by the pending-stop round is
noted on the switch that left it pending. Bounded: the newest `KEPT` switches, and per switch
the `NODES_KEPT` nodes that needed the most, with counts for all of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.broker.transition import NodeStops, TransitionRecord
from shared.kv_document import Document

__all__ = ["KEPT", "NODES_KEPT", "NodeSummary", "SwitchHistory", "SwitchLog", "SwitchSummary", "summarize"]

KEPT = 50
NODES_KEPT = 200

SwitchResult = Literal["done", "failed", "stop_pending", "superseded"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSummary(_Model):
    node_id: str
    outcome: str  # ready, stop_pending, failed, removed, or "unfinished" for a superseded switch
    detail: str = ""
    stop_calls: int = 0
    stop_s: float | None = None
    confirmed_later_at: float | None = None  # a pending stop the retry round confirmed
    later_retries: int = 0


class SwitchSummary(_Model):
    transition_id: str
    previous: str | None = None
    target: str
    height: int = 0
    reason: str = "plan"
    started_at: float = 0.0
    finished_at: float | None = None
    result: SwitchResult
    nodes_total: int = 0
    outcomes: dict[str, int] = {}  # outcome -> nodes
    stop_calls: dict[str, int] = {}  # stop calls a node needed (as text) -> nodes
    nodes: tuple[NodeSummary, ...] = ()  # the `NODES_KEPT` that needed the most

    @property
    def handover_s(self) -> float | None:
        return None if self.finished_at is None else round(self.finished_at - self.started_at, 3)


class SwitchLog(_Model):
    switches: tuple[SwitchSummary, ...] = ()  # oldest first

    def with_switch(self, summary: SwitchSummary) -> SwitchLog:
        """Add or replace (a summary written twice, after a restart, is the same switch)."""
        kept = tuple(s for s in self.switches if s.transition_id != summary.transition_id)
        return SwitchLog(switches=(*kept, summary)[-KEPT:])

    def with_stop_confirmed(self, transition_id: str, node_id: str, retries: int, at: float) -> SwitchLog:
        switches = []
        for s in self.switches:
            if s.transition_id == transition_id:
                nodes = tuple(
                    n.model_copy(update={"confirmed_later_at": at, "later_retries": retries})
                    if n.node_id == node_id and n.confirmed_later_at is None
                    else n
                    for n in s.nodes
                )
                s = s.model_copy(update={"nodes": nodes})
            switches.append(s)
        return SwitchLog(switches=tuple(switches))


def summarize(record: TransitionRecord) -> SwitchSummary:
    """A switch as the history keeps it; pure."""
    nodes = []
    for node_id in record.nodes:
        outcome = record.outcomes.get(node_id)
        stops = record.stops.get(node_id, NodeStops())
        nodes.append(
            NodeSummary(
                node_id=node_id,
                outcome=outcome.outcome if outcome else "unfinished",
                detail=outcome.detail if outcome else "",
                stop_calls=stops.calls,
                stop_s=stops.seconds,
            )
        )
    ordinary = {"ready"}
    # The unusual nodes first (not ready, then the most stop calls, then the slowest stops).
    nodes.sort(key=lambda n: (n.outcome in ordinary, -n.stop_calls, -(n.stop_s or 0.0)))
    return SwitchSummary(
        transition_id=record.transition_id,
        previous=record.previous.raw if record.previous else None,
        target=record.target.raw,
        height=record.height,
        reason=record.reason,
        started_at=record.started_at,
        finished_at=record.finished_at,
        result="superseded" if record.result == "running" else record.result,
        nodes_total=len(record.nodes),
        outcomes=dict(Counter(n.outcome for n in nodes)),
        stop_calls={str(k): v for k, v in sorted(Counter(n.stop_calls for n in nodes).items())},
        nodes=tuple(nodes[:NODES_KEPT]),
    )


class SwitchHistory:
    """The one writer of the switch log."""

    def __init__(self, doc: Document[SwitchLog]) -> None:
        self.doc = doc

    async def load(self) -> SwitchLog:
        return await self.doc.load()

    async def add(self, record: TransitionRecord) -> None:
        summary = summarize(record)
        await self.doc.mutate(lambda log: log.with_switch(summary))

    async def stop_confirmed(self, transition_id: str, node_id: str, retries: int, at: float) -> None:
        await self.doc.mutate(lambda log: log.with_stop_confirmed(transition_id, node_id, retries, at))
