"""The broker at its edges: NATS in and out, KV persistence, httpx to the MLNodes, HTTP server.

Everything that decides lives in the pure modules and the coordinator; this module only wires
them and runs the loops: the `version.changed` consumer, the reconcile round (default 30 s), the
pending-stop round, and the readiness probe of the next plan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI

from services.broker.coordinator import Coordinator
from services.broker.forwarder import Forwarder
from services.broker.http_app import create_app
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import ClientBook, HttpGateway
from services.broker.models import NodeConfig, load_node_file
from services.broker.node_store import kv_store
from services.broker.pool import NodePool
from services.broker.registry_client import NatsRegistryReader
from services.broker.settings import BrokerSettings
from shared.bus import Bus
from shared.consumer import Delivery, DurableConsumer
from shared.events import Event, VersionChanged
from shared.kv_store import VersionedStore
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.ops_app import ReadinessCheck
from shared.provisioning import broker_consumer

__all__ = ["BrokerService", "BusPublisher"]

log = get_logger(__name__)


class BusPublisher:
    def __init__(self, bus: Bus, retry_for_s: float = 10.0) -> None:
        self.bus = bus
        self.retry_for_s = retry_for_s

    async def publish(self, event: Event) -> None:
        await self.bus.publish(event, retry_for_s=self.retry_for_s)


async def _every(name: str, interval_s: float, work: Callable[[], Awaitable[object]]) -> None:
    """Run `work` now and then every `interval_s`; a failing round is logged and the next one runs."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("round failed", extra={"round": name})
        await asyncio.sleep(interval_s)


class BrokerService:
    def __init__(self, settings: BrokerSettings, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServiceMetrics(settings.service_name)
        self.pool = NodePool()
        self.broker_metrics = BrokerMetrics(self.metrics, self.pool)
        self.book = ClientBook(settings.client.timeouts())
        self.forwarder = Forwarder(
            self.pool, self.book, self.broker_metrics, settings.request_wait_s, settings.forward_attempts
        )
        self._bus: Bus | None = None
        self._coordinator: Coordinator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("BrokerService.start() has not run")
        return self._bus

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            raise RuntimeError("BrokerService.start() has not run")
        return self._coordinator

    def seed_nodes(self) -> tuple[NodeConfig, ...]:
        path = self.settings.nodes_file
        return () if path is None else load_node_file(path.read_text())

    async def start(self) -> None:
        s = self.settings
        seed = self.seed_nodes()  # a bad file is an error at start-up, not later
        self._bus = await Bus.connect(s.nats, s.service_name, self.metrics, give_up_after_s=None)
        kv = await self.bus.bind_bucket(s.bucket)  # provisioned: `mlnode-upgrade nats provision`
        self._coordinator = Coordinator(
            kv_store(VersionedStore(kv)),
            HttpGateway(self.book, s.dtype),
            self.pool,
            BusPublisher(self.bus),
            NatsRegistryReader(self.bus, s.registry_timeout_s),
            self.broker_metrics,
            s.policies(),
        )
        await self.coordinator.start(seed)
        consumer = DurableConsumer(
            self.bus,
            broker_consumer(s.durable, s.ack_wait_s),
            self._on_event,
        )
        self._tasks = [
            asyncio.create_task(consumer.run()),
            asyncio.create_task(_every("reconcile", s.reconcile_interval_s, self.coordinator.reconcile)),
            asyncio.create_task(
                _every("pending_stops", s.pending_stop_interval_s, self.coordinator.retry_pending_stops)
            ),
            asyncio.create_task(
                _every("readiness", s.readiness_interval_s, self.coordinator.probe_readiness)
            ),
        ]
        self.started = True
        log.info(
            "broker running",
            extra={
                "nodes": len(self.pool.slots),
                "http_port": s.http_port,
                "nats": s.nats.url,
                "version": self.pool.current.raw if self.pool.current else None,
            },
        )

    async def _on_event(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, VersionChanged):
            log.info(
                "version.changed received",
                extra={
                    "event": "version.changed",
                    "transition": event.transition_id,
                    "version": event.current.raw,
                    "previous": event.previous.raw if event.previous else None,
                    "height": event.height,
                    "stream_seq": delivery.stream_seq,
                },
            )
            await self.coordinator.on_version_changed(event)

    def readiness_checks(self) -> list[ReadinessCheck]:
        return [
            ReadinessCheck("started", lambda: self.started),
            ReadinessCheck("nats", lambda: self._bus is not None and self._bus.nc.is_connected),
            ReadinessCheck("current_version_known", lambda: self.pool.current is not None),
        ]

    def app(self) -> FastAPI:
        return create_app(
            self.coordinator,
            self.forwarder,
            self.broker_metrics,
            self.readiness_checks(),
            admin_token=self.settings.resolved_admin_token(),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._coordinator is not None:
            await self._coordinator.shutdown()
        await self.book.aclose()
        if self._bus is not None:
            await self._bus.close()

    async def run(self) -> None:
        """Start, serve HTTP until SIGTERM/SIGINT, then stop cleanly."""
        await self.start()
        config = uvicorn.Config(
            self.app(),
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=max(1, round(self.settings.http_keep_alive_s)),
        )
        try:
            await uvicorn.Server(config).serve()
        finally:
            await self.stop()
            log.info("broker stopped")
