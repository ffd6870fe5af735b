"""The broker's own metrics, on the service's registry next to the shared bus counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.broker.pool import NodePool
from services.broker.transition import TransitionRecord
from shared.metrics import PREFIX, ServiceMetrics

__all__ = ["BrokerMetrics", "SwitchView"]

P = f"{PREFIX}_broker"
_SLOW_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, float("inf"))


class _PoolCollector(Collector):
    """Read at scrape time from the pool, so the figures are never stale."""

    def __init__(self, pool: Callable[[], NodePool | None]) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.pool()
        in_flight = GaugeMetricFamily(f"{P}_in_flight", "Forwarded requests in flight", labels=["version"])
        ready = GaugeMetricFamily(f"{P}_nodes_ready", "Nodes ready on the current version")
        nodes = GaugeMetricFamily(f"{P}_nodes", "Nodes the broker manages")
        if pool is not None:
            for version, count in sorted(pool.in_flight_by_version().items()):
                in_flight.add_metric([version.raw], count)
            ready.add_metric([], sum(1 for s in pool.slots.values() if s.ready and s.version == pool.current))
            nodes.add_metric([], len(pool.slots))
        yield in_flight
        yield ready
        yield nodes


class SwitchView(Protocol):
    """What the scrape reads of the switch; `services.broker.status.BrokerStatus` is one."""

    @property
    def record(self) -> TransitionRecord | None: ...

    def switch_running(self) -> bool: ...


class _SwitchCollector(Collector):
    """The latest switch (running or last finished), read at scrape time from its record.

    Nothing is exported before `BrokerMetrics.follow_switch`; after it, a broker that never
    switched exports zeros. Timestamps are Unix seconds (the record's wall clock), 0 when unset.
    """

    def __init__(self) -> None:
        self.view: SwitchView | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(f"{P}_switch_running", "1 while a switch is being carried out")
        height = GaugeMetricFamily(f"{P}_switch_height", "Height of the latest switch (0: none)")
        nodes = GaugeMetricFamily(f"{P}_switch_nodes", "Nodes in scope of the latest switch")
        remaining = GaugeMetricFamily(
            f"{P}_switch_remaining_nodes", "Nodes of the latest switch without an outcome yet"
        )
        started = GaugeMetricFamily(
            f"{P}_switch_started_timestamp_seconds", "When the latest switch began (Unix time; 0: none)"
        )
        finished = GaugeMetricFamily(
            f"{P}_switch_finished_timestamp_seconds",
            "When every node of the latest switch had an outcome (Unix time; 0: unfinished or none)",
        )
        view = self.view
        if view is not None:
            record = view.record
            running.add_metric([], 1 if view.switch_running() else 0)
            height.add_metric([], record.height if record else 0)
            nodes.add_metric([], len(record.nodes) if record else 0)
            remaining.add_metric([], len(record.remaining) if record else 0)
            started.add_metric([], record.started_at if record else 0.0)
            finished.add_metric([], (record.finished_at or 0.0) if record else 0.0)
        yield from (running, height, nodes, remaining, started, finished)


class BrokerMetrics:
    def __init__(self, metrics: ServiceMetrics, pool: NodePool | None = None) -> None:
        r = metrics.registry
        self._switch = _SwitchCollector()
        self.base = metrics
        self.transition_seconds = Histogram(
            f"{P}_transition_seconds",
            "From the start of a switch to every node having an outcome",
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.node_handoff_seconds = Histogram(
            f"{P}_node_handoff_seconds",
            "One node's handoff, drain to ready",
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.node_outcomes_total = Counter(
            f"{P}_node_outcomes_total", "Per-node outcomes of switches", ["outcome"], registry=r
        )
        self.work_carried_total = Counter(
            f"{P}_work_carried_total",
            "Per node and switch: the work the new version took up, and whether it was the node's work",
            ["work", "carried"],
            registry=r,
        )
        self.stop_failures_total = Counter(
            f"{P}_stop_failures_total",
            "Stops of an old version that were not confirmed (each becomes a pending stop)",
            registry=r,
        )
        self.stops_confirmed_total = Counter(
            f"{P}_stops_confirmed_total", "Stops confirmed by state == STOPPED", registry=r
        )
        self.pending_stops = Gauge(f"{P}_pending_stops", "Stops still to be confirmed", registry=r)
        self.forwarded_total = Counter(
            f"{P}_forwarded_total", "Forwarded inference requests by result", ["route", "result"], registry=r
        )
        self.endpoint_version_mismatch_total = Counter(
            f"{P}_endpoint_version_mismatch_total",
            "Node-endpoint calls whose version prefix was not the current version (the registry's won)",
            ["sent", "current"],
            registry=r,
        )
        self.endpoint_redirected_total = Counter(
            f"{P}_endpoint_redirected_total",
            "Node-endpoint inference calls for a node staged or being handed over, served by another node",
            registry=r,
        )
        self.forward_wait_seconds = Histogram(
            f"{P}_forward_wait_seconds",
            "Time a request waited for a ready node",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.target_ready = Gauge(
            f"{P}_target_ready",
            "Whether a node can serve the pending plan's version (1) or not (0)",
            ["node", "version"],
            registry=r,
        )
        r.register(_PoolCollector(lambda: pool))
        r.register(self._switch)

    def follow_switch(self, view: SwitchView) -> None:
        """Export the switch as `view` shows it (the coordinator's status, built after the metrics)."""
        self._switch.view = view
