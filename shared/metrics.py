"""Prometheus metrics shared by every service.

Each service owns its own `CollectorRegistry`, so several services (or tests) in one process
never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["PREFIX", "ServiceMetrics"]

PREFIX = "mlnode_upgrade"


class ServiceMetrics:
    """The event-bus counters every service has; services add their own on `registry`."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_received_total = Counter(
            f"{PREFIX}_events_received_total", "Messages delivered to a consumer", ["subject"], registry=r
        )
        self.events_invalid_total = Counter(
            f"{PREFIX}_events_invalid_total",
            "Messages refused by validation and copied to errors.<service>",
            ["subject", "reason"],
            registry=r,
        )
        self.events_handled_total = Counter(
            f"{PREFIX}_events_handled_total", "Events handled and acknowledged", ["subject"], registry=r
        )
        self.handler_errors_total = Counter(
            f"{PREFIX}_handler_errors_total",
            "Handler failures (message redelivered later)",
            ["subject"],
            registry=r,
        )
        self.events_published_total = Counter(
            f"{PREFIX}_events_published_total",
            "Events published; duplicate=true when JetStream dropped it by Nats-Msg-Id",
            ["subject", "duplicate"],
            registry=r,
        )
        self.event_handle_seconds = Histogram(
            f"{PREFIX}_event_handle_seconds", "Time spent in an event handler", ["subject"], registry=r
        )
        # process_start_time_seconds (restarts), process_resident_memory_bytes, process_cpu_seconds_total,
        # open fds: read from /proc at scrape time (nothing on a platform without it).
        ProcessCollector(registry=r)

    def sample(self, name: str, **labels: str) -> float:
        """Current value of one sample (0 when it was never touched); for tests and status output."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
