"""The registry's series (names are a public contract), on top of the service's own."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from shared.metrics import PREFIX, ServiceMetrics
from shared.registry_api import PendingPlan
from shared.versions import MLNodeVersion

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
        self.last_used_version = Gauge(
            f"{PREFIX}_registry_last_used_version",
            "1 for the version the broker last reported every node handed over to",
            ["version"],
            registry=r,
        )
        self.next_plan_height = Gauge(
            f"{PREFIX}_registry_next_plan_height",
            "Height of the lowest pending plan to each version (absent when none is pending)",
            ["version"],
            registry=r,
        )
        self.blocks_to_next_plan = Gauge(
            f"{PREFIX}_registry_blocks_to_next_plan",
            "Blocks from the highest height seen to each version's lowest pending plan (0 once due)",
            ["version"],
            registry=r,
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

    def show_last_used(self, version: MLNodeVersion | None) -> None:
        self.last_used_version.clear()
        if version is not None:
            self.last_used_version.labels(version=version.raw).set(1)

    def show_next_plan(self, pending: Sequence[PendingPlan], last_height: int) -> None:
        """Per version, its lowest pending plan's height and the blocks left to it (none: no series).

        One series per version, not only the lowest plan: the broker gets ready for the first plan
        that changes the version, and its `target_ready{version}` joins these on `version`.
        """
        self.next_plan_height.clear()
        self.blocks_to_next_plan.clear()
        lowest: dict[str, int] = {}
        for plan in pending:
            version = plan.node_version.raw
            lowest[version] = min(plan.height, lowest.get(version, plan.height))
        for version, height in lowest.items():
            self.next_plan_height.labels(version=version).set(height)
            self.blocks_to_next_plan.labels(version=version).set(max(0, height - last_height))
