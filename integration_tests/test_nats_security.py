"""Who may reach what is enforced by nats-server (accounts and permissions), not by convention.

Every forging route is tried with every service's credentials against a real server: none of them
may put a message on a subject another service owns, or change a stream, bucket or consumer.
A control case runs the reply-subject route with the operator's credentials, where it does land,
so the assertions are known to be able to fail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from devtools.embedded_nats import EmbeddedNats, free_port
from integration_tests.nats_security import Credentials
from integration_tests.service_procs import ServiceProcess
from integration_tests.support import eventually
from shared.bus import ALL_STREAMS, CHAIN_STREAM, VERSION_STREAM, Bus, BusError
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled, VersionChanged
from shared.nats_config import DEFAULT_GRANTS
from shared.provisioning import provision
from shared.settings import NatsSettings

SERVICES = [g.user for g in DEFAULT_GRANTS]
OWN_BUCKET = {g.user: g.bucket for g in DEFAULT_GRANTS}
# For each service, a subject it does not own and a valid event for it: what a forger would send.
FORGED: dict[str, tuple[str, bytes]] = {
    "chain-watcher": (
        "version.changed",
        VersionChanged(transition_id="9-v6.6.6", current="v6.6.6", height=9).to_json(),
    ),  # type: ignore[arg-type]
    "registry": ("chain.block", BlockCommitted(height=99999).to_json()),
    "broker": (
        "version.changed",
        VersionChanged(transition_id="9-v6.6.6", current="v6.6.6", height=9).to_json(),
    ),  # type: ignore[arg-type]
}


async def connect_as(
    server: EmbeddedNats, creds: Credentials, user: str, errors: list[Exception], timeout_s: float = 1.0
) -> Bus:
    bus = await Bus.connect(creds.settings(server.url, user, request_timeout_s=timeout_s), user)

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    bus.nc._error_cb = on_error  # capture the server's permission errors for the assertion
    return bus


async def stored(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return info.state.messages


async def snapshot(admin: Bus, writer: str | None = None) -> dict[str, object]:
    """Every stream's message count and configuration, and every consumer: what a forgery changes.

    The `writer`'s own bucket may gain messages (its own writes are its right); its config may not change.
    """
    out: dict[str, object] = {}
    for name in [s.name for s in ALL_STREAMS] + [f"KV_{b}" for b in OWN_BUCKET.values()]:
        info = await admin.js.stream_info(name)
        assert info.config is not None
        count = None if writer is not None and name == f"KV_{OWN_BUCKET[writer]}" else info.state.messages
        out[name] = (count, json.dumps(info.config.as_dict(), sort_keys=True))
        out[f"{name}/consumers"] = sorted(c.name for c in await admin.js.consumers_info(name))
    out["streams"] = sorted(str(s.config.name) for s in await admin.js.streams_info() if s.config)
    return out


async def settle(attacker: Bus) -> None:
    """A round trip through the server and its JetStream API after the attempts."""
    await attacker.nc.flush()
    assert await attacker.jetstream_ready(timeout_s=5.0)


async def js_api(attacker: Bus, subject: str, body: dict[str, object], reply_to: str | None = None) -> None:
    """Send a raw JetStream API request; a refusal, no responder or timeout all count as refused."""
    data = json.dumps(body).encode()
    if reply_to is not None:
        await attacker.nc.publish(subject, data, reply=reply_to)
        return
    try:
        msg = await attacker.nc.request(subject, data, timeout=0.5)
    except (nats.errors.Error, TimeoutError):
        return
    answer = json.loads(msg.data or b"{}")
    assert "error" in answer, f"{subject} was accepted: {answer}"


def routes(user: str) -> dict[str, Callable[[Bus], Awaitable[None]]]:
    victim, forged = FORGED[user]
    stream_of_victim = "VERSION" if victim.startswith("version.") else "CHAIN"
    own_kv = f"KV_{OWN_BUCKET[user]}"

    async def core_publish(bus: Bus) -> None:
        await bus.nc.publish(victim, forged)

    async def jetstream_publish(bus: Bus) -> None:
        with pytest.raises((BusError, nats.errors.Error, TimeoutError)):
            await bus.js.publish(victim, forged, timeout=1.0)

    async def stream_update_republish(bus: Bus) -> None:
        config = {
            "name": own_kv,
            "subjects": [f"$KV.{OWN_BUCKET[user]}.>"],
            "republish": {"src": ">", "dest": victim},
        }
        await js_api(bus, f"$JS.API.STREAM.UPDATE.{own_kv}", config)
        await js_api(
            bus,
            f"$JS.API.STREAM.UPDATE.{stream_of_victim}",
            {
                "name": stream_of_victim,
                "subjects": [f"{victim.split('.')[0]}.>"],
                "republish": {"src": ">", "dest": victim},
            },
        )

    async def stream_sources(bus: Bus) -> None:
        config = {
            "name": stream_of_victim,
            "subjects": [f"{victim.split('.')[0]}.>"],
            "sources": [{"name": own_kv}],
        }
        await js_api(bus, f"$JS.API.STREAM.UPDATE.{stream_of_victim}", config)

    async def stream_mirror(bus: Bus) -> None:
        await js_api(bus, "$JS.API.STREAM.CREATE.EVIL", {"name": "EVIL", "mirror": {"name": own_kv}})

    async def new_stream_over_subject(bus: Bus) -> None:
        await js_api(bus, "$JS.API.STREAM.CREATE.EVIL2", {"name": "EVIL2", "subjects": [victim]})

    async def push_consumer_deliver_subject(bus: Bus) -> None:
        config = {"stream_name": own_kv, "config": {"deliver_subject": victim, "ack_policy": "none"}}
        await js_api(bus, f"$JS.API.CONSUMER.CREATE.{own_kv}", config)
        await js_api(
            bus,
            f"$JS.API.CONSUMER.DURABLE.CREATE.{own_kv}.evil",
            {**config, "config": {**config["config"], "durable_name": "evil"}},
        )  # type: ignore[dict-item]

    async def direct_get_reply_subject(bus: Bus) -> None:
        kv = await bus.js.key_value(OWN_BUCKET[user])
        await kv.put("forged", forged)
        query = {"last_by_subj": f"$KV.{OWN_BUCKET[user]}.forged"}
        await js_api(bus, f"$JS.API.DIRECT.GET.{own_kv}", query, reply_to=victim)
        await js_api(bus, f"$JS.API.STREAM.MSG.GET.{own_kv}", query, reply_to=victim)

    async def publish_ack_reply_subject(bus: Bus) -> None:
        await bus.nc.publish(f"$KV.{OWN_BUCKET[user]}.x", forged, reply=victim)

    async def request_reply_subject(bus: Bus) -> None:
        await bus.nc.publish("registry.state", b"{}", reply=victim)

    return {
        "core publish": core_publish,
        "JetStream publish": jetstream_publish,
        "stream update with republish": stream_update_republish,
        "stream update with sources": stream_sources,
        "new stream mirroring": stream_mirror,
        "new stream over the subject": new_stream_over_subject,
        "push consumer delivering to the subject": push_consumer_deliver_subject,
        "direct or message get with the subject as reply": direct_get_reply_subject,
        "publish ack to the subject as reply": publish_ack_reply_subject,
        "request with the subject as reply": request_reply_subject,
    }


ROUTES = tuple(routes("broker"))


@pytest.mark.parametrize("user", SERVICES)
async def test_no_forging_route_reaches_another_services_subject(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus, user: str
) -> None:
    victim, _ = FORGED[user]
    landed: list[bytes] = []

    async def on_victim(msg: Msg) -> None:
        landed.append(msg.data)

    await admin.nc.subscribe(victim, cb=on_victim)
    await admin.nc.flush()
    before = await snapshot(admin, user)
    errors: list[Exception] = []
    attacker = await connect_as(secured_nats, creds, user, errors, timeout_s=0.3)  # refused: no answer
    outcomes: dict[str, str] = {}
    try:
        for route, attempt in routes(user).items():
            await attempt(attacker)
            await settle(attacker)
            await admin.nc.flush()
            changed = await snapshot(admin, user) != before
            outcomes[route] = "LANDED" if landed else "CHANGED TOPOLOGY" if changed else "refused"
            landed.clear()
    finally:
        await attacker.close()
    assert set(outcomes) == set(ROUTES)
    assert all(o == "refused" for o in outcomes.values()), f"{user} -> {victim}: {outcomes}"
    assert any("permissions violation" in str(e).lower() for e in errors)


async def test_control_the_reply_route_lands_for_a_user_in_the_stream_account(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus
) -> None:
    """Without account isolation a reply subject is a forging route: the operator's account shows it."""
    landed: list[bytes] = []

    async def on_victim(msg: Msg) -> None:
        landed.append(msg.data)

    await admin.nc.subscribe("version.changed", cb=on_victim)
    kv = await admin.js.key_value("broker")
    _, forged = FORGED["broker"]
    await kv.put("forged", forged)
    query = json.dumps({"last_by_subj": "$KV.broker.forged"}).encode()
    await admin.nc.publish("$JS.API.STREAM.MSG.GET.KV_broker", query, reply="version.changed")
    await eventually(lambda: bool(landed), message="the message get's answer on version.changed")


async def test_services_cannot_provision_or_delete(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus
) -> None:
    for user in SERVICES:
        errors: list[Exception] = []
        # Every request here is refused, which the server does by not answering: a short wait.
        bus = await connect_as(secured_nats, creds, user, errors, timeout_s=0.3)
        try:
            with pytest.raises((BusError, nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                await bus.ensure_stream(CHAIN_STREAM)
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await bus.js.delete_stream(CHAIN_STREAM.name)
            with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                await bus.js.add_consumer(CHAIN_STREAM.name, ConsumerConfig(durable_name=f"{user}-x"))
        finally:
            await bus.close()
    assert (await admin.js.stream_info(CHAIN_STREAM.name)).config.name == CHAIN_STREAM.name
    assert sorted(c.name for c in await admin.js.consumers_info(CHAIN_STREAM.name)) == [
        "version-registry-chain"
    ]


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


def registry_process(server: EmbeddedNats, creds: Credentials, tmp_path: Path) -> ServiceProcess:
    """The real registry with its own credentials (not started)."""
    port = free_port()
    env = {
        "VERSION_REGISTRY_NATS__URL": server.url,
        **creds.env("VERSION_REGISTRY_", "registry"),
        "VERSION_REGISTRY_HTTP_PORT": str(port),
        "VERSION_REGISTRY_GRPC_PORT": str(free_port()),
    }
    return ServiceProcess(
        "services.version_registry", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "reg.log"
    )


async def test_registry_does_its_job_with_only_its_own_rights(
    secured_nats: EmbeddedNats, creds: Credentials, admin: Bus, tmp_path: Path
) -> None:
    """The permissions are not so tight that the service cannot work."""
    proc = registry_process(secured_nats, creds, tmp_path)
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


async def test_a_service_waits_for_provisioning_and_says_so(
    secured_nats: EmbeddedNats, creds: Credentials, tmp_path: Path
) -> None:
    """Before provisioning the registry waits and logs the command to run; after it, it works."""
    proc = registry_process(secured_nats, creds, tmp_path)
    started = asyncio.create_task(asyncio.to_thread(proc.start, 60.0))
    try:
        await eventually(
            lambda: proc.log_path.exists() and "mlnode-upgrade nats provision" in proc.log_tail(4000),
            timeout=30,
            message="the provisioning hint in the log",
        )
        assert not started.done()  # not serving while its bucket is missing
        provisioner = await Bus.connect(creds.settings(secured_nats.url, "provisioner"), "provisioner")
        await provision(provisioner)
        await provision(provisioner)  # idempotent
        await provisioner.close()
        await started
        admin = await Bus.connect(creds.settings(secured_nats.url, "admin"), "admin")
        try:
            reply = await admin.nc.request("registry.state", b"{}", timeout=5)
            assert b"current_version" in reply.data
        finally:
            await admin.close()
    finally:
        proc.kill()
