"""The persisted switch: its record, each node's outcome, and `broker.refreshed` once all have one.

The order makes a crash at any point safe: the record is written before any node is touched,
each outcome is written before `broker.refreshed`, which is published once all nodes have one
and then marked as published (its Nats-Msg-Id makes a second publish a duplicate anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from services.broker.metrics import BrokerMetrics
from services.broker.ports import Publisher
from services.broker.switch_log import SwitchHistory
from services.broker.transition import NodeStops, TransitionRecord
from shared.events import NodeOutcome
from shared.kv_document import Document
from shared.logging import get_logger

__all__ = ["SwitchLedger", "switch_fields"]

log = get_logger(__name__)


def switch_fields(record: TransitionRecord | None, **extra: Any) -> dict[str, Any]:
    """The fields every log line about a switch carries."""
    if record is None:
        return extra
    return {
        "transition": record.transition_id,
        "version": record.target.raw,
        "previous": record.previous.raw if record.previous else None,
        "height": record.height,
        **extra,
    }


class SwitchLedger:
    """Owns the transition record: the one copy in memory follows every write to KV."""

    def __init__(
        self,
        doc: Document[TransitionRecord | None],
        publisher: Publisher,
        metrics: BrokerMetrics,
        history: SwitchHistory,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.doc = doc
        self.history = history
        self.publisher = publisher
        self.metrics = metrics
        self.wall = wall
        self.record: TransitionRecord | None = None

    async def load(self) -> TransitionRecord | None:
        self.record = await self.doc.load()
        return self.record

    async def begin(self, record: TransitionRecord) -> TransitionRecord | None:
        """Persisted before any node is touched: a restart resumes exactly this switch."""
        superseded: list[TransitionRecord] = []

        def supersede(old: TransitionRecord | None) -> TransitionRecord:
            superseded.clear()  # called again on a compare-and-swap retry
            if old is not None and not old.complete and old.transition_id != record.transition_id:
                superseded.append(old)
            return record

        self.record = await self.doc.mutate(supersede, at_once=True)  # the route waits on it
        for old in superseded:
            await self.history.add(old)
        return self.record

    async def record_outcome(
        self, record: TransitionRecord, outcome: NodeOutcome, stops: NodeStops | None = None
    ) -> None:
        tid = record.transition_id
        now = self.wall()
        finished: list[TransitionRecord] = []

        def update(current: TransitionRecord | None) -> TransitionRecord | None:
            finished.clear()  # called again on a compare-and-swap retry
            if current is None or current.transition_id != tid:
                return current  # superseded meanwhile
            new = current.with_outcome(outcome, now, stops)
            if new.complete and not current.complete:
                finished.append(new)
            return new

        self.record = await self.doc.mutate(update)
        for done in finished:
            await self.history.add(done)
        self.metrics.node_outcomes_total.labels(outcome=outcome.outcome).inc()
        level = logging.INFO if outcome.outcome in ("ready", "removed") else logging.WARNING
        log.log(
            level,
            f"node {outcome.outcome}",
            extra=switch_fields(
                record,
                event="handoff.done",
                node=outcome.node_id,
                outcome=outcome.outcome,
                detail=outcome.detail,
            ),
        )

    async def publish_refreshed(self) -> None:
        """Tell the registry the switch is done; marked in KV so a restart does not repeat it."""
        record = self.record
        if record is None or not record.needs_publish:
            return
        try:
            await self.publisher.publish(record.refreshed_event())
        except Exception as exc:  # retried by the reconcile loop
            log.warning(
                "broker.refreshed not published; will retry",
                extra=switch_fields(record, event="broker.refreshed", error=repr(exc)),
            )
            return
        tid = record.transition_id
        self.record = await self.doc.mutate(
            lambda r: r.published() if r is not None and r.transition_id == tid else r
        )
        log.info("broker.refreshed published", extra=switch_fields(record, event="broker.refreshed"))
