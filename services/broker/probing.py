"""Before a scheduled switch: probe the next plan's version on every node and report readiness.

The evaluation is pure (`readiness`); this module makes the calls, keeps the last report for
the HTTP status, sets the per-node gauge and publishes `broker.readiness` when it changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import MLNodeCallError
from services.broker.models import NodeConfig
from services.broker.pool import NodePool
from services.broker.ports import Gateway, Publisher, RegistryReader
from services.broker.readiness import Probe, next_plan, report
from shared.events import BrokerReadiness, StagingView
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["ReadinessProber"]

log = get_logger(__name__)


class ReadinessProber:
    def __init__(
        self,
        pool: NodePool,
        gateway: Gateway,
        registry: RegistryReader,
        publisher: Publisher,
        metrics: BrokerMetrics,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.registry = registry
        self.publisher = publisher
        self.metrics = metrics
        self.readiness: BrokerReadiness | None = None
        self._published: BrokerReadiness | None = None

    async def probe(
        self, staging: Callable[[], Awaitable[StagingView | None]] | None = None
    ) -> BrokerReadiness | None:
        """Probe the next plan's version on every node; publish `broker.readiness` when it changed.

        `staging`, when given, runs after the probes (the staged switch plans from them) and its
        view of the plan is carried in the report.
        """
        state = await self.registry.state()
        if state is None:
            return self.readiness
        plan = next_plan(state)
        if plan is None:
            self.readiness = None
            self.metrics.target_ready.clear()
            if staging is not None:
                await staging()  # a staging whose plan went away is called off, or is done
            return None
        probes = await asyncio.gather(
            *(self._probe(slot.config, plan.node_version) for slot in list(self.pool.slots.values()))
        )
        readiness = report(plan, probes)
        self.readiness = readiness
        if staging is not None:
            readiness = readiness.model_copy(update={"staging": await staging()})
            self.readiness = readiness
        self.metrics.target_ready.clear()
        for node in readiness.nodes:
            self.metrics.target_ready.labels(node=node.node_id, version=plan.node_version.raw).set(
                1 if node.ready else 0
            )
        if readiness != self._published:
            not_ready = [n.node_id for n in readiness.nodes if not n.ready]
            log.log(
                logging.WARNING if not_ready else logging.INFO,
                "readiness for the next switch changed",
                extra={
                    "event": "broker.readiness",
                    "version": plan.node_version.raw,
                    "height": plan.height,
                    "not_ready": not_ready[:50],
                    "nodes": len(readiness.nodes),
                },
            )
            try:
                await self.publisher.publish(readiness)
            except Exception as exc:
                log.warning("broker.readiness not published", extra={"error": repr(exc)})
            else:
                self._published = readiness
        return readiness

    async def _probe(self, node: NodeConfig, version: MLNodeVersion) -> Probe:
        """One call per node when the health answer carries the state (the real one does)."""
        state: str | None = None
        state_error = health_error = ""
        try:
            state = await self.gateway.management_health(node, version)
        except MLNodeCallError as exc:
            health_error = str(exc)
        if state is None:
            try:
                state = await self.gateway.state(node, version)
            except MLNodeCallError as exc:
                state_error = str(exc)
        return Probe(node.id, state, state_error, health_error)
