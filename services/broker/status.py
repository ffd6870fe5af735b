"""A read-only view of the broker for its HTTP pages: nodes, the switch, readiness, pending stops.

The HTTP app reads only this, so it cannot reach into the pool, the store or the switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.broker import live_view
from services.broker.models import NodeConfig, PendingStop
from services.broker.outcomes import SwitchLedger
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import NodePool
from services.broker.ports import RegistryReader
from services.broker.probing import ReadinessProber
from services.broker.switch_log import SwitchHistory
from services.broker.transition import TransitionRecord
from shared.events import BrokerReadiness
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

# The registry's state is asked at most this often for the live view, however many watch it.
REGISTRY_STATE_TTL_S = 0.5

__all__ = ["BrokerStatus", "NodeStatus"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    config: NodeConfig
    version: MLNodeVersion | None = None
    ready: bool = False
    phase: str = "unknown"
    in_flight: int = 0
    phase_since: float = 0.0

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
        registry: RegistryReader,
        history: SwitchHistory,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._pending = pending
        self._prober = prober
        self._switch_running = switch_running
        self._registry = registry
        self._history = history
        self._wall = wall
        self._clock = clock
        self._state: tuple[float, RegistryState | None] | None = None

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
            phase_since=slot.phase_since,
        )

    def of(self, config: NodeConfig) -> NodeStatus:
        """The status of `config`'s node, or "unknown" when it is not (or no longer) in the pool."""
        found = self.node(config.id)
        return (
            NodeStatus(config)
            if found is None
            else NodeStatus(
                config, found.version, found.ready, found.phase, found.in_flight, found.phase_since
            )
        )

    def nodes(self) -> list[NodeStatus]:
        return [status for node_id in list(self._pool.slots) if (status := self.node(node_id)) is not None]

    async def pending_stops(self) -> tuple[PendingStop, ...]:
        return (await self._pending.load()).items

    async def _registry_state(self) -> RegistryState | None:
        """The registry's state, asked again only when the last answer is older than the TTL."""
        now = self._clock()
        if self._state is None or now - self._state[0] >= REGISTRY_STATE_TTL_S:
            self._state = (now, await self._registry.state())
        return self._state[1]

    async def live(self) -> dict[str, Any]:
        """The live view of the upgrade (`services.broker.live_view`)."""
        state = await self._registry_state()
        nodes = [
            live_view.LiveNode(s.config.id, s.version, s.ready, str(s.phase), s.phase_since, s.in_flight)
            for s in self.nodes()
        ]
        return live_view.live_view(
            now=self._wall(),
            state=state,
            current=self.current,
            nodes=nodes,
            record=self.record,
            readiness=self.readiness,
            pending_stops=await self.pending_stops(),
            stops_retried=self._pending.retried,
            held=self._pool.held(),
            served=self._pool.served,
            in_flight=self._pool.in_flight_by_version(),
        )

    async def history(self, limit: int) -> dict[str, Any]:
        return live_view.history(await self._history.load(), limit)
