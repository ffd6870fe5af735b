"""The registry's series (names are a public contract), on top of the service's own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from shared.metrics import PREFIX, ServiceMetrics

__all__ = ["RegistryMetrics"]


class RegistryMetrics(ServiceMetrics):
    def __init__(self, service: str) -> None:
        super().__init__(service)
        r = self.registry
        self.transitions_total = Counter(
            f"{PREFIX}_registry_transitions_total", "Version switches by reason", ["reason"], registry=r
        )
        self.cas_conflicts_total = Counter(
            f"{PREFIX}_registry_cas_conflicts_total",
            "State writes refused because another writer won",
            registry=r,
        )
        self.last_height = Gauge(f"{PREFIX}_registry_last_height", "Highest block height seen", registry=r)
        self.pending_plans = Gauge(
            f"{PREFIX}_registry_pending_plans", "Plans waiting for their height", registry=r
        )
        self.current_version = Gauge(
            f"{PREFIX}_registry_current_version", "1 for the current version", ["version"], registry=r
        )
        self.handoff_pending = Gauge(
            f"{PREFIX}_registry_handoff_pending", "1 while current != last_used", registry=r
        )
        self.chain_height = Gauge(
            f"{PREFIX}_registry_chain_height", "Height of the chain's last version snapshot", registry=r
        )
        self.ahead_of_chain_total = Counter(
            f"{PREFIX}_registry_ahead_of_chain_total",
            "Chain snapshots that found the registry ahead of the chain (it stepped back to the chain)",
            registry=r,
        )
