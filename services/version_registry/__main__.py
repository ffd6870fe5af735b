"""`python -m services.version_registry`: the single writer of version state.

Settings come from `VERSION_REGISTRY_*` (NATS under `VERSION_REGISTRY_NATS__*`); SIGTERM stops it
cleanly, SIGKILL loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import uvicorn

from proto.mlnode_upgrade.v1 import registry_pb2_grpc
from services.version_registry.grpc_api import RegistryServicer
from services.version_registry.http_app import create_http_app
from services.version_registry.service import RegistryMetrics, RegistryService
from services.version_registry.settings import RegistrySettings
from shared.bus import Bus
from shared.logging import configure_logging, get_logger
from shared.settings import SettingsError, load_settings

log = get_logger("services.version_registry")


async def run(settings: RegistrySettings) -> None:
    metrics = RegistryMetrics(settings.service_name)
    bus = await Bus.connect(settings.nats, settings.service_name, metrics, give_up_after_s=None)
    service = RegistryService(bus, settings, metrics)
    await service.start()
    await service.serve_requests()
    tasks = [asyncio.create_task(c.run()) for c in service.consumers()]
    tasks.append(asyncio.create_task(service.follow_other_writers()))

    grpc_server: grpc.aio.Server | None = None
    if settings.grpc_enabled:
        grpc_server = grpc.aio.server()
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(service), grpc_server)
        grpc_server.add_insecure_port(f"{settings.http_host}:{settings.grpc_port}")
        await grpc_server.start()

    config = uvicorn.Config(
        create_http_app(service),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
    )
    log.info(
        "version-registry running",
        extra={"http_port": settings.http_port, "grpc_port": settings.grpc_port, "nats": settings.nats.url},
    )
    try:
        await uvicorn.Server(config).serve()  # returns on SIGTERM / SIGINT
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        await bus.close()
        log.info("version-registry stopped")


def main() -> int:
    try:
        settings = load_settings(RegistrySettings)
    except SettingsError as exc:
        print(f"version-registry: {exc}", file=sys.stderr)
        return 2
    configure_logging("version-registry", settings.log_level)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
