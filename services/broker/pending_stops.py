"""Stops of an old version that could not be confirmed yet, kept in KV until they are.

A stop that could not be confirmed is written here before the node's outcome, so a restart keeps
retrying it. A pending stop of the version that serves now is never kept (nor ever sent).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from services.broker.handoff import Finish
from services.broker.metrics import BrokerMetrics
from services.broker.models import PendingStop, PendingStops
from shared.kv_document import Document
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["PendingStopBook"]

log = get_logger(__name__)


class PendingStopBook:
    """Every change goes through here, so the `pending_stops` gauge always matches the document."""

    def __init__(
        self,
        doc: Document[PendingStops],
        metrics: BrokerMetrics,
        *,
        wall: Callable[[], float] = time.time,
        on_confirmed: Callable[[str, str, int, float], Awaitable[None]] | None = None,
    ) -> None:
        """`on_confirmed(transition_id, node_id, retries, at)`: a retried pending stop was confirmed."""
        self.doc = doc
        self.metrics = metrics
        self.wall = wall
        self.on_confirmed = on_confirmed
        self.retried = 0  # retries of pending stops by this process, for the live view

    async def _change(self, fn: Callable[[PendingStops], PendingStops]) -> PendingStops:
        pending = await self.doc.mutate(fn)
        self.metrics.pending_stops.set(len(pending.items))
        return pending

    async def load(self) -> PendingStops:
        return await self.doc.load()

    async def count(self) -> None:
        """At start-up: the gauge from what is stored."""
        self.metrics.pending_stops.set(len((await self.doc.load()).items))

    async def forget_version(self, version: MLNodeVersion) -> None:
        await self._change(lambda p: p.forget_version(version))

    async def forget_node(self, node_id: str) -> None:
        await self._change(lambda p: p.forget_node(node_id))

    async def settle(
        self,
        node_id: str,
        transition_id: str,
        finish: Finish,
        current: Callable[[], MLNodeVersion | None],
        log_fields: dict[str, Any],
    ) -> None:
        """Confirmed stops clear their pending entry; unconfirmed ones become (or stay) pending.

        `current` is read when the document is written: the version serving then is never kept.
        """
        if not finish.confirmed and not finish.unconfirmed:
            return
        now = self.wall()

        def update(pending: PendingStops) -> PendingStops:
            for version in finish.confirmed:
                pending = pending.remove(node_id, version)
            for stop in finish.unconfirmed:
                if stop.version == current():
                    continue  # never keep a stop for the version that serves now
                pending = pending.add(
                    PendingStop(
                        node_id=node_id,
                        version=stop.version,
                        transition_id=transition_id,
                        attempts=1,
                        last_error=stop.error,
                        since=now,
                    )
                )
            return pending

        await self._change(update)
        self.metrics.stops_confirmed_total.inc(len(finish.confirmed))
        for stop in finish.unconfirmed:
            self.metrics.stop_failures_total.inc()
            log.warning(
                "stop not confirmed; kept as a pending stop",
                extra={
                    **log_fields,
                    "event": "stop.pending",
                    "node": node_id,
                    "stopped": stop.version.raw,
                    "error": stop.error,
                },
            )

    async def due(self, current: MLNodeVersion | None, nodes: Collection[str]) -> PendingStops:
        """The stops to try now; those of the current version or of a removed node are dropped."""
        pending = await self.doc.load()
        stale = [p for p in pending.items if p.version == current or p.node_id not in nodes]
        if not stale:
            return pending

        def drop(items: PendingStops) -> PendingStops:
            for p in stale:
                items = items.remove(p.node_id, p.version)
            return items

        return await self._change(drop)

    async def confirmed(self, stop: PendingStop) -> None:
        self.retried += 1
        await self._change(lambda p: p.remove(stop.node_id, stop.version))
        self.metrics.stops_confirmed_total.inc()
        if self.on_confirmed is not None:
            await self.on_confirmed(stop.transition_id, stop.node_id, stop.attempts, self.wall())

    async def failed_again(self, stop: PendingStop, error: str) -> None:
        """One more attempt counted, unless the stop was dropped meanwhile."""
        self.retried += 1
        await self._change(
            lambda p: (
                p.add(stop.model_copy(update={"attempts": 1, "last_error": error[:2000]}))
                if any(x.key == stop.key for x in p.items)
                else p
            )
        )
