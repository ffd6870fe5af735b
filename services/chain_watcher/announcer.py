"""Publishing a step's events on CHAIN in order, and logging and counting each one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from services.chain_watcher.core import Outgoing, Step, describe_plan
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.ports import EventSink
from shared.bus import Published
from shared.events import BlockCommitted, ChainVersionObserved, Event, UpgradeScheduled
from shared.logging import get_logger

__all__ = ["Announcer"]

log = get_logger("services.chain_watcher.service")  # the logger name operators filter on


_Report = Callable[["Announcer", Any, Outgoing, Published], None]


class Announcer:
    """Publishes a step's events in order and reports each one as its type says (log, counter)."""

    def __init__(self, sink: EventSink, series: WatcherMetrics, retry_for_s: float) -> None:
        self.sink = sink
        self.series = series
        self.retry_for_s = retry_for_s

    async def announce(self, step: Step, cursor_height: int | None) -> None:
        self._report_refusals(step, cursor_height)
        for out in step.publishes:
            event = out.event
            ack = await self.sink.publish_raw(
                event.SUBJECT, event.to_json(), out.msg_id, retry_for_s=self.retry_for_s
            )
            report = _REPORTS.get(type(event))
            if report is not None:
                report(self, event, out, ack)

    def _report_refusals(self, step: Step, cursor_height: int | None) -> None:
        for plan, reason in step.refused_plans:
            self.series.plans_refused.inc()
            log.warning(
                "partial upgrade not announced",
                extra={"event": UpgradeScheduled.SUBJECT, **describe_plan(plan), "reason": reason},
            )
        if step.refused_version is not None:
            raw, reason = step.refused_version
            log.warning(
                "chain MLNodeVersion not announced",
                extra={
                    "event": ChainVersionObserved.SUBJECT,
                    "version": raw,
                    "reason": reason,
                    "height": cursor_height,
                },
            )

    def block_published(self, event: BlockCommitted, out: Outgoing, ack: Published) -> None:
        self.series.blocks_seen.inc()
        log.debug(
            "block published",
            extra={"event": event.SUBJECT, "height": event.height, "duplicate": ack.duplicate},
        )

    def plan_published(self, event: UpgradeScheduled, out: Outgoing, ack: Published) -> None:
        if not ack.duplicate:
            self.series.plans_published.inc()
        log.info(
            "upgrade plan published",
            extra={
                "event": event.SUBJECT,
                **describe_plan(event),
                "msg_id": out.msg_id,
                "duplicate": ack.duplicate,
                "stream_seq": ack.seq,
            },
        )

    def version_published(self, event: ChainVersionObserved, out: Outgoing, ack: Published) -> None:
        if not ack.duplicate:
            self.series.versions_published.inc()
        log.info(
            "chain version published",
            extra={
                "event": event.SUBJECT,
                "version": str(event.current_version),
                "height": event.height,
                "duplicate": ack.duplicate,
                "stream_seq": ack.seq,
            },
        )


# One report per event type the watcher publishes.
_REPORTS: dict[type[Event], _Report] = {
    BlockCommitted: cast(_Report, Announcer.block_published),
    UpgradeScheduled: cast(_Report, Announcer.plan_published),
    ChainVersionObserved: cast(_Report, Announcer.version_published),
}
