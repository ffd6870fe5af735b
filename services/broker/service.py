"""The broker at its edges: NATS in and out, KV persistence, httpx to the MLNodes, HTTP server.

`build_broker` is the one composition root: it builds the adapters (bus, KV, MLNode clients,
registry client, metrics), hands them to the core (`Coordinator`), loads its state, and returns
a `BrokerService` ready to run. The service only runs the loops (the `version.changed`
consumer, the reconcile round, the pending-stop round, the readiness probe) and serves HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from services.broker.coordinator import Coordinator
from services.broker.forwarder import Forwarder
from services.broker.http_app import create_app
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import ClientBook, HttpGateway
from services.broker.models import NodeConfig, load_node_file
from services.broker.node_endpoint import NodeEndpoint
from services.broker.node_store import kv_store
from services.broker.pool import NodePool
from services.broker.registry_client import NatsRegistryReader
from services.broker.settings import BrokerSettings
from shared.bus import Bus
from shared.consumer import Delivery, DurableConsumer
from shared.events import Event, VersionChanged
from shared.http_serving import HttpServer
from shared.kv_store import VersionedStore
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.ops_app import ReadinessCheck
from shared.provisioning import broker_consumer

__all__ = ["BrokerService", "BusPublisher", "build_broker", "run_broker"]

log = get_logger(__name__)

HTTP_GRACE_S = 5.0


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


def seed_nodes(settings: BrokerSettings) -> tuple[NodeConfig, ...]:
    path = settings.nodes_file
    return () if path is None else load_node_file(path.read_text())


async def build_broker(settings: BrokerSettings, metrics: ServiceMetrics | None = None) -> BrokerService:
    """Edges, then the core on them, then its state loaded: the service returned is ready to run."""
    s = settings
    seed = seed_nodes(s)  # a bad file is an error at start-up, not later
    metrics = metrics or ServiceMetrics(s.service_name)
    pool = NodePool()
    broker_metrics = BrokerMetrics(metrics, pool)
    book = ClientBook(s.client.timeouts())
    bus = await Bus.connect(s.nats, s.service_name, metrics, give_up_after_s=None)
    try:
        kv = await bus.bind_bucket(s.bucket)  # provisioned: `mlnode-upgrade nats provision`
        coordinator = Coordinator(
            kv_store(VersionedStore(kv)),
            HttpGateway(book, s.dtype),
            pool,
            BusPublisher(bus),
            NatsRegistryReader(bus, s.registry_timeout_s),
            broker_metrics,
            s.policies(),
        )
        broker_metrics.follow_switch(coordinator.status)  # the switch gauges, read at scrape time
        await coordinator.start(seed)
    except BaseException:
        await book.aclose()
        await bus.close()
        raise
    forwarder = Forwarder(pool, book, broker_metrics, s.request_wait_s, s.forward_attempts)
    return BrokerService(s, bus, pool, coordinator, forwarder, book, broker_metrics)


class BrokerService:
    def __init__(
        self,
        settings: BrokerSettings,
        bus: Bus,
        pool: NodePool,
        coordinator: Coordinator,
        forwarder: Forwarder,
        book: ClientBook,
        metrics: BrokerMetrics,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.pool = pool
        self.coordinator = coordinator
        self.forwarder = forwarder
        self.book = book
        self.broker_metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def start_rounds(self) -> None:
        s = self.settings
        c = self.coordinator
        consumer = DurableConsumer(self.bus, broker_consumer(s.durable, s.ack_wait_s), self._on_event)
        self._tasks = [
            asyncio.create_task(consumer.run()),
            asyncio.create_task(_every("reconcile", s.reconcile_interval_s, c.reconcile)),
            asyncio.create_task(_every("pending_stops", s.pending_stop_interval_s, c.retry_pending_stops)),
            asyncio.create_task(_every("readiness", s.readiness_interval_s, c.probe_readiness)),
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
            ReadinessCheck("nats", lambda: self.bus.nc.is_connected),
            ReadinessCheck("current_version_known", lambda: self.pool.current is not None),
        ]

    def app(self) -> FastAPI:
        return create_app(
            self.coordinator,
            self.forwarder,
            self.broker_metrics,
            self.readiness_checks(),
            admin_token=self.settings.resolved_admin_token(),
            endpoint=NodeEndpoint(
                self.pool,
                self.book,
                self.coordinator.scheduler,
                self.coordinator.works,
                self.broker_metrics,
                self.settings.request_wait_s,
                release_staged=self.coordinator.stager.release,
            ),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.coordinator.shutdown()
        await self.book.aclose()
        await self.bus.close()

    async def serve(self, stopping: asyncio.Event) -> None:
        """Run the rounds and serve HTTP until `stopping` is set (or the server ends), then stop."""
        try:
            self.start_rounds()
            server = HttpServer(
                self.app(),
                self.settings.http_host,
                self.settings.http_port,
                grace_s=HTTP_GRACE_S,
                timeout_keep_alive=max(1, round(self.settings.http_keep_alive_s)),
            )
            await server.start()
            try:
                stop_wait = asyncio.create_task(stopping.wait())
                waits: set[asyncio.Task[object]] = {stop_wait}
                if server.task is not None:  # it ends early only when the server failed
                    waits.add(server.task)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
            finally:
                await server.stop()
        finally:
            await self.stop()
            log.info("broker stopped")


async def run_broker(settings: BrokerSettings) -> None:
    """The process: build, serve until SIGTERM/SIGINT, then stop cleanly.

    A signal while it is still connecting cancels the build (NATS may be away for good).
    """
    stopping = asyncio.Event()
    building = asyncio.create_task(build_broker(settings))

    def on_signal() -> None:
        stopping.set()
        building.cancel()  # a no-op once built

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        service = await building
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        log.info("broker stopped before it was ready")
        return
    await service.serve(stopping)
