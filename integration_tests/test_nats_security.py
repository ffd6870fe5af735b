"""Who may publish what is enforced by nats-server, not by convention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest

from integration_tests.nats_security import Credentials
from integration_tests.service_procs import ServiceProcess
from integration_tests.support import eventually
from shared.bus import CHAIN_STREAM, VERSION_STREAM, Bus, BusError
from shared.embedded_nats import EmbeddedNats, free_port
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled, VersionChanged
from shared.nats_config import render_server_config
from shared.settings import NatsSettings


@pytest.fixture
def creds(tmp_path: Path) -> Credentials:
    return Credentials.generate(tmp_path / "secrets")


@pytest.fixture
def secured_nats(tmp_path: Path, creds: Credentials) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        tmp_path / "nats",
        config=lambda s: render_server_config(
            server_name=s.name,
            host=s.host,
            port=s.port,
            http_port=s.monitor_port,
            store_dir=s.data_dir / "jetstream",
            users=creds.users,
        ),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def admin(secured_nats: EmbeddedNats, creds: Credentials) -> AsyncIterator[Bus]:
    bus = await Bus.connect(creds.settings(secured_nats.url, "admin"), "admin")
    await bus.ensure_streams()
    yield bus
    await bus.close()


async def connect_as(server: EmbeddedNats, creds: Credentials, user: str, errors: list[Exception]) -> Bus:
    bus = await Bus.connect(creds.settings(server.url, user, request_timeout_s=1.0), user)

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    bus.nc._error_cb = on_error  # capture the server's permission errors for the assertion
    return bus


async def stored(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return info.state.messages


async def test_chain_watcher_may_publish_chain_facts_but_not_version_changed(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus
) -> None:
    errors: list[Exception] = []
    watcher = await connect_as(secured_nats, creds, "chain-watcher", errors)
    try:
        ack = await watcher.publish(BlockCommitted(height=7))
        assert ack.seq == 1
        forged = VersionChanged(transition_id="7-v6.6.6", current="v6.6.6", height=7)  # type: ignore[arg-type]
        with pytest.raises((BusError, nats.errors.Error)):
            await watcher.publish(forged)
        await eventually(
            lambda: any("permissions violation" in str(e).lower() for e in errors), message="server refused"
        )
        assert await stored(admin, VERSION_STREAM.name, "version.changed") == 0
    finally:
        await watcher.close()


async def test_broker_may_not_schedule_an_upgrade(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus
) -> None:
    errors: list[Exception] = []
    broker = await connect_as(secured_nats, creds, "broker", errors)
    try:
        with pytest.raises((BusError, nats.errors.Error)):
            await broker.publish(UpgradeScheduled(height=99, node_version="v6.6.6"))  # type: ignore[arg-type]
        await eventually(
            lambda: any("permissions violation" in str(e).lower() for e in errors), message="server refused"
        )
        assert await stored(admin, CHAIN_STREAM.name, "chain.upgrade.scheduled") == 0
    finally:
        await broker.close()


async def test_no_credentials_no_connection(secured_nats: EmbeddedNats, creds: Credentials) -> None:
    with pytest.raises(BusError, match="cannot connect"):
        await Bus.connect(
            NatsSettings(url=secured_nats.url, connect_timeout_s=0.5), "anon", give_up_after_s=1
        )
    wrong = NatsSettings(
        url=secured_nats.url, user="broker", password="not-the-password", connect_timeout_s=0.5
    )
    with pytest.raises(BusError, match="cannot connect"):
        await Bus.connect(wrong, "impostor", give_up_after_s=1)


async def test_registry_does_its_job_with_only_its_own_rights(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus, tmp_path: Path
) -> None:
    """The permissions are not so tight that the service cannot work."""
    port = free_port()
    env = {
        "VERSION_REGISTRY_NATS__URL": secured_nats.url,
        **creds.env("VERSION_REGISTRY_", "registry"),
        "VERSION_REGISTRY_HTTP_PORT": str(port),
        "VERSION_REGISTRY_GRPC_PORT": str(free_port()),
    }
    proc = ServiceProcess(
        "services.version_registry", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "reg.log"
    )
    proc.start()
    errors: list[Exception] = []
    watcher = await connect_as(secured_nats, creds, "chain-watcher", errors)
    try:
        await watcher.publish(ChainVersionObserved(current_version="v3.0.6", height=1))  # type: ignore[arg-type]
        await watcher.publish(UpgradeScheduled(height=3, node_version="v3.0.8"))  # type: ignore[arg-type]
        for h in (2, 3):
            await watcher.publish(BlockCommitted(height=h))

        async def switched() -> bool:
            return await stored(admin, VERSION_STREAM.name, "version.changed") == 2

        await eventually(switched, timeout=20, message="registry published both switches")
        reply = await admin.nc.request("registry.state", b"{}", timeout=5)
        assert b'"current_version":"v3.0.8"' in reply.data
        # A chain-watcher may not ask the registry to roll back.
        with pytest.raises(nats.errors.Error):
            await watcher.nc.request("registry.rollback", b"{}", timeout=1)
        await eventually(
            lambda: any("registry.rollback" in str(e) for e in errors), message="rollback request refused"
        )
    finally:
        await watcher.close()
        proc.kill()
    assert "permissions violation" not in proc.log_tail(400).lower()


async def test_ensure_streams_is_allowed_but_deleting_history_is_not(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus
) -> None:
    errors: list[Exception] = []
    registry = await connect_as(secured_nats, creds, "registry", errors)
    try:
        await registry.ensure_streams()  # idempotent create-or-update works
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await registry.js.delete_stream(CHAIN_STREAM.name)
        assert (await admin.js.stream_info(CHAIN_STREAM.name)).config.name == CHAIN_STREAM.name
    finally:
        await registry.close()
