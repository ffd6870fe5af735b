"""The version-registry's composition root: settings in, a running `RegistryService` out.

`build_registry` connects to NATS, opens the state's KV document, hands both to the service
(`registry.py`) and publishes what a crash left in the outbox, then starts what feeds and asks
it: the durable consumers, NATS request-reply, gRPC and HTTP. Leaving the context stops them
in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import nats.js.errors

from proto.mlnode_upgrade.v1 import registry_pb2_grpc
from services.version_registry.grpc_api import RegistryServicer
from services.version_registry.http_app import create_http_app
from services.version_registry.metrics import RegistryMetrics
from services.version_registry.nats_api import serve_requests
from services.version_registry.registry import RegistryService
from services.version_registry.settings import RegistrySettings
from services.version_registry.store import (
    STATE_CODEC,
    STATE_KEY,
    TRANSITION_LOG_CODEC,
    TRANSITION_LOG_KEY,
    Stored,
    StoredState,
    TransitionLog,
)
from shared.bus import VERSION_STREAM, Bus
from shared.consumer import DurableConsumer
from shared.events import VersionChanged
from shared.http_serving import HttpServer
from shared.kv_document import Codec, KvDocument
from shared.kv_store import VersionedStore
from shared.logging import get_logger
from shared.ops_app import ReadinessCheck
from shared.provisioning import registry_consumers

__all__ = ["MAX_CAS_ATTEMPTS", "RegistryApp", "RegistryMetrics", "StreamChangeLog", "build_registry"]

MAX_CAS_ATTEMPTS = 100
OUTBOX_PUBLISH_RETRY_S = 30.0

log = get_logger(__name__)
T = TypeVar("T")


class StreamChangeLog:
    """`version.changed` on the VERSION stream, through the bus (the `ChangeLog` port)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def publish(self, change: VersionChanged) -> None:
        await self.bus.publish(change, retry_for_s=OUTBOX_PUBLISH_RETRY_S)

    async def last_published(self) -> bytes | None:
        try:
            last = await self.bus.js.get_last_msg(VERSION_STREAM.name, VersionChanged.SUBJECT)
        except nats.js.errors.NotFoundError:
            return None
        return last.data or b""


@dataclass(frozen=True)
class RegistryApp:
    """A running registry with the servers it answers on."""

    service: RegistryService
    http: HttpServer
    grpc_server: grpc.aio.Server | None


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _document(
    store: VersionedStore, key: str, codec: Codec[T], default: T, metrics: RegistryMetrics
) -> KvDocument[T]:
    """A registry document: compare-and-swap, each conflict counted."""
    return KvDocument(
        store, key, codec, default, max_attempts=MAX_CAS_ATTEMPTS, on_conflict=metrics.cas_conflicts_total.inc
    )


@asynccontextmanager
async def build_registry(settings: RegistrySettings) -> AsyncIterator[RegistryApp]:
    metrics = RegistryMetrics(settings.service_name)
    try:
        async with AsyncExitStack() as stack:
            bus = await Bus.connect(settings.nats, settings.service_name, metrics, give_up_after_s=None)
            stack.push_async_callback(bus.close)
            kv = await bus.bind_bucket(settings.bucket)  # provisioned: `mlnode-upgrade nats provision`
            store = VersionedStore(kv)
            document = _document(store, STATE_KEY, STATE_CODEC, StoredState(), metrics)
            transitions = _document(store, TRANSITION_LOG_KEY, TRANSITION_LOG_CODEC, TransitionLog(), metrics)
            loaded = Stored(await document.load(), document.revision)
            service = RegistryService(
                document, StreamChangeLog(bus), metrics, loaded, transitions=transitions
            )
            await service.resume()

            await serve_requests(bus.nc, service)
            specs = registry_consumers(settings.chain_durable, settings.broker_durable, settings.ack_wait_s)
            tasks = [
                asyncio.create_task(DurableConsumer(bus, spec, service.handle, service.handle_batch).run())
                for spec in specs
            ]
            tasks.append(asyncio.create_task(service.follow_other_writers()))
            stack.push_async_callback(_cancel_all, tasks)

            grpc_server: grpc.aio.Server | None = None
            if settings.grpc_enabled:
                grpc_server = grpc.aio.server()
                registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(service), grpc_server)
                grpc_server.add_insecure_port(f"{settings.http_host}:{settings.grpc_port}")
                await grpc_server.start()
                stack.push_async_callback(grpc_server.stop, 2)

            nats_checks = [
                ReadinessCheck("nats", lambda: bus.nc.is_connected),
                ReadinessCheck("jetstream", bus.jetstream_ready),
            ]
            app = create_http_app(service, settings.resolved_admin_token(), nats_checks)
            http = await HttpServer(app, settings.http_host, settings.http_port).start()
            stack.push_async_callback(http.stop)
            log.info(
                "version-registry running",
                extra={
                    "http_port": settings.http_port,
                    "grpc_port": settings.grpc_port,
                    "nats": settings.nats.url,
                },
            )
            yield RegistryApp(service, http, grpc_server)
    finally:
        log.info("version-registry stopped")
