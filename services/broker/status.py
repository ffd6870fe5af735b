"""A read-only view of the broker for its HTTP pages: nodes, the switch, readiness, pending stops.

The HTTP app reads only this, so it cannot reach into the pool, the store or the switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.broker.models import NodeConfig, PendingStop
from services.broker.outcomes import SwitchLedger
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import NodePool
from services.broker.probing import ReadinessProber
from services.broker.transition import TransitionRecord
from shared.events import BrokerReadiness
from shared.versions import MLNodeVersion

__all__ = ["BrokerStatus", "NodeStatus"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    config: NodeConfig
    version: MLNodeVersion | None = None
    ready: bool = False
    phase: str = "unknown"
    in_flight: int = 0

    def state(self) -> dict[str, Any]:
        return {
            "version": self.version.raw if self.version else None,
            "ready": self.ready,
            "phase": str(self.phase),
            "in_flight": self.in_flight,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "status": self.state()}


class BrokerStatus:
    def __init__(
        self,
        pool: NodePool,
        ledger: SwitchLedger,
        pending: PendingStopBook,
        prober: ReadinessProber,
        switch_running: Callable[[], bool],
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._pending = pending
        self._prober = prober
        self._switch_running = switch_running

    @property
    def current(self) -> MLNodeVersion | None:
        return self._pool.current

    @property
    def record(self) -> TransitionRecord | None:
        return self._ledger.record

    @property
    def readiness(self) -> BrokerReadiness | None:
        return self._prober.readiness

    def switch_running(self) -> bool:
        return self._switch_running()

    def node(self, node_id: str) -> NodeStatus | None:
        slot = self._pool.get(node_id)
        if slot is None:
            return None
        return NodeStatus(
            config=slot.config,
            version=slot.version,
            ready=slot.ready,
            phase=slot.phase,
            in_flight=sum(slot.in_flight.values()),
        )

    def of(self, config: NodeConfig) -> NodeStatus:
        """The status of `config`'s node, or "unknown" when it is not (or no longer) in the pool."""
        found = self.node(config.id)
        return (
            NodeStatus(config)
            if found is None
            else NodeStatus(config, found.version, found.ready, found.phase, found.in_flight)
        )

    def nodes(self) -> list[NodeStatus]:
        return [status for node_id in list(self._pool.slots) if (status := self.node(node_id)) is not None]

    async def pending_stops(self) -> tuple[PendingStop, ...]:
        return (await self._pending.load()).items
