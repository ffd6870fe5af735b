"""version-registry as a real process against a real nats-server, fed raw JSON as `nats pub` would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats, free_port
from integration_tests.service_procs import ServiceProcess
from integration_tests.support import eventually
from proto.mlnode_upgrade.v1 import registry_pb2, registry_pb2_grpc
from services.version_registry.core import CoreState, apply
from shared.bus import ERRORS_STREAM, VERSION_STREAM, Bus
from shared.events import VersionChanged, parse_event
from shared.provisioning import Topology, provision
from shared.registry_api import ErrorReply, HistoryReply, RegistryState


def _s(version: object) -> str | None:
    return None if version is None else str(version)


ADMIN_TOKEN = "test-admin-token"
Raw = tuple[str, str]  # (subject, JSON) exactly as typed on the command line


class Registries:
    def __init__(self, nats_url: str, tmp_path: Path) -> None:
        self.nats_url = nats_url
        self.tmp_path = tmp_path
        self.running: list[ServiceProcess] = []

    def start(self, name: str = "a") -> tuple[ServiceProcess, str, int]:
        http_port, grpc_port = free_port(), free_port()
        env = {
            "VERSION_REGISTRY_NATS__URL": self.nats_url,
            "VERSION_REGISTRY_HTTP_PORT": str(http_port),
            "VERSION_REGISTRY_GRPC_PORT": str(grpc_port),
            "VERSION_REGISTRY_ACK_WAIT_S": "2",
            "VERSION_REGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        base = f"http://127.0.0.1:{http_port}"
        proc = ServiceProcess(
            "services.version_registry", env, f"{base}/healthz", self.tmp_path / f"{name}.log"
        )
        self.running.append(proc.start())
        return proc, base, grpc_port

    def stop_all(self) -> None:
        for proc in self.running:
            proc.kill()


@pytest.fixture
async def registries(nats_server: EmbeddedNats, tmp_path: Path, bus: Bus) -> AsyncIterator[Registries]:
    # Streams, buckets and consumers come from the provisioning step (ack wait as the env below).
    await provision(bus, Topology(registry_ack_wait_s=2))
    regs = Registries(nats_server.url, tmp_path)
    yield regs
    regs.stop_all()


async def get_state(base: str) -> RegistryState:
    async with httpx.AsyncClient() as client:
        return RegistryState.model_validate_json((await client.get(f"{base}/state")).content)


async def publish_raw(bus: Bus, events: list[Raw]) -> None:
    for subject, payload in events:
        await bus.js.publish(subject, payload.encode())


async def version_changed_messages(bus: Bus) -> list[VersionChanged]:
    info = await bus.js.stream_info(VERSION_STREAM.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(VERSION_STREAM.name, seq)
        out.append(VersionChanged.model_validate_json(msg.data or b""))
    return out


def expected_core(events: list[Raw]) -> CoreState:
    """The core over the same events, numbered as the CHAIN stream numbers them (it starts empty)."""
    state = CoreState()
    for seq, (subject, payload) in enumerate(events, start=1):
        event = parse_event(subject, payload.encode())
        state = apply(state, event, datetime.now(UTC), seq).state  # type: ignore[arg-type]
    return state


PLANS = {10: "v3.0.8", 20: "v3.0.9", 30: "v3.0.10"}


def chain_snapshot(height: int) -> Raw:
    """What the chain-watcher publishes after block `height`: the chain's version and its plans above."""
    version = "v3.0.6"
    for plan_height, plan_version in sorted(PLANS.items()):
        if plan_height <= height:
            version = plan_version
    stored_at = {10: 5, 20: 15, 30: 25}  # where the vote ended: from there on the chain lists the plan
    plans = [{"height": h, "node_version": v} for h, v in sorted(PLANS.items()) if stored_at[h] <= height < h]
    return ("chain.version", json.dumps({"current_version": version, "height": height, "plans": plans}))


def scenario(last_block: int = 40) -> list[Raw]:
    """Plans 10 and 30 announced ahead; plan 20 seen only after its block (the watcher missed it),
    so the chain's snapshot at 25 confirms it; snapshots as the chain-watcher sends them."""
    events: list[Raw] = [chain_snapshot(1)]
    announced = {5: 10, 22: 20, 25: 30}  # published before block N (22: late)
    for height in range(2, last_block + 1):
        if height in announced:
            h = announced[height]
            events.append(("chain.upgrade.scheduled", json.dumps({"height": h, "node_version": PLANS[h]})))
        events.append(("chain.block", json.dumps({"height": height})))
        if height in (10, 25, 30, last_block):
            events.append(chain_snapshot(height))
    return events


def summary(state: RegistryState | CoreState) -> dict[str, Any]:
    if isinstance(state, CoreState):
        state = state.view()
    return {
        "current": state.current_version,
        "last_used": state.last_used_version,
        "last_height": state.last_height,
        "pending": state.pending,
    }


async def test_switch_happens_on_the_block_at_the_plans_height(bus: Bus, registries: Registries) -> None:
    _, base, _ = registries.start()
    await publish_raw(
        bus,
        [
            ("chain.version", '{"current_version": "v3.0.6", "height": 1}'),
            ("chain.upgrade.scheduled", '{"height": 10, "node_version": "v3.0.8"}'),
        ]
        + [("chain.block", f'{{"height": {h}}}') for h in range(2, 10)],
    )

    async def at(height: int) -> bool:
        return (await get_state(base)).last_height == height

    await eventually(lambda: at(9), message="block 9 processed")
    assert _s((await get_state(base)).current_version) == "v3.0.6"  # not one block early
    assert [c.reason for c in await version_changed_messages(bus)] == ["sync"]

    await publish_raw(bus, [("chain.block", '{"height": 10}')])
    await eventually(lambda: at(10), message="block 10 processed")
    state = await get_state(base)
    assert _s(state.current_version) == "v3.0.8" and state.current_transition == "10-v3.0.8"
    changes = await version_changed_messages(bus)
    assert [(c.transition_id, _s(c.previous), _s(c.current), c.height) for c in changes] == [
        ("sync-1-v3.0.6", None, "v3.0.6", 1),
        ("10-v3.0.8", "v3.0.6", "v3.0.8", 10),
    ]

    # The broker reports the handoff: last_used follows, only for the current transition.
    await publish_raw(bus, [("broker.refreshed", '{"transition_id": "sync-1-v3.0.6", "version": "v3.0.6"}')])
    await publish_raw(bus, [("broker.refreshed", '{"transition_id": "10-v3.0.8", "version": "v3.0.8"}')])

    async def refreshed() -> bool:
        return _s((await get_state(base)).last_used_version) == "v3.0.8"

    await eventually(refreshed, message="last_used recorded")


async def test_sigkill_at_any_point_converges_without_duplicate_switches(
    bus: Bus, registries: Registries
) -> None:
    events = scenario()
    await publish_raw(bus, events)
    for kill_after_height in (0, 6, 14, 23, 31):
        proc, base, _ = registries.start(f"run-{kill_after_height}")

        async def reached(h: int = kill_after_height, b: str = base) -> bool:
            return (await get_state(b)).last_height >= h

        await eventually(reached, message=f"processed up to {kill_after_height}")
        proc.kill()

    _, base, _ = registries.start("final")
    expected = expected_core(events)

    async def done() -> bool:
        return (await get_state(base)).last_height == 40

    await eventually(done, timeout=20, message="all 40 blocks processed")
    state = await get_state(base)
    assert summary(state) == summary(expected)
    changes = await version_changed_messages(bus)
    ids = [c.transition_id for c in changes]
    assert ids == [t.transition_id for t in expected.history]  # in order, none twice
    assert ids == ["sync-1-v3.0.6", "10-v3.0.8", "20-v3.0.9", "30-v3.0.10"]


async def test_a_plan_missed_while_down_is_caught_through_the_chain_snapshot(
    bus: Bus, registries: Registries
) -> None:
    proc, base, _ = registries.start("before")
    await publish_raw(bus, [("chain.version", '{"current_version": "v3.0.6", "height": 5}')])

    async def synced() -> bool:
        return _s((await get_state(base)).current_version) == "v3.0.6"

    await eventually(synced, message="initial sync")
    proc.terminate()
    # While it was down the chain applied a plan nobody announced; at restart the watcher snapshots.
    await publish_raw(bus, [("chain.version", '{"current_version": "v3.0.8", "height": 60}')])
    _, base, _ = registries.start("after")

    async def caught() -> bool:
        return _s((await get_state(base)).current_version) == "v3.0.8"

    await eventually(caught, message="snapshot adopted")
    changes = await version_changed_messages(bus)
    assert [(c.reason, _s(c.current), c.height) for c in changes] == [
        ("sync", "v3.0.6", 5),
        ("sync", "v3.0.8", 60),
    ]


async def test_two_instances_at_once_leave_a_consistent_state(bus: Bus, registries: Registries) -> None:
    _, base_a, _ = registries.start("a")
    _, base_b, _ = registries.start("b")
    events = scenario()
    await publish_raw(bus, events)

    async def done() -> bool:
        a, b = await get_state(base_a), await get_state(base_b)
        return a.last_height == 40 and a == b

    await eventually(done, timeout=20, message="both instances see the final state")
    state = await get_state(base_a)
    assert _s(state.current_version) == "v3.0.10" and state.pending == ()
    changes = await version_changed_messages(bus)
    ids = [c.transition_id for c in changes]
    assert len(ids) == len(set(ids))  # no switch announced twice
    async with httpx.AsyncClient() as client:
        history = HistoryReply.model_validate_json((await client.get(f"{base_a}/history")).content)
    assert ids == [t.transition_id for t in history.transitions]  # every decided switch, announced once
    # Two instances share one consumer, so order is not kept: a plan may land by the chain's snapshot.
    assert ids[0] == "sync-1-v3.0.6" and ids[-1].endswith("-v3.0.10")


async def test_a_thousand_invalid_payloads_change_nothing(bus: Bus, registries: Registries) -> None:
    _, base, _ = registries.start()
    await publish_raw(bus, [("chain.version", '{"current_version": "v3.0.6", "height": 3}')])

    async def synced() -> bool:
        return _s((await get_state(base)).current_version) == "v3.0.6"

    await eventually(synced, message="initial sync")
    before = await get_state(base)
    bad = [
        ("chain.block", '{"height": 0}'),
        ("chain.block", '{"height": "120"}'),
        ("chain.block", "{not json"),
        ("chain.upgrade.scheduled", '{"height": 50, "node_version": "../v3.0.8"}'),
        ("chain.upgrade.scheduled", '{"height": 50, "node_version": "v3.0.8", "extra": 1}'),
        ("chain.version", '{"current_version": "v3.0"}'),
        ("broker.refreshed", '{"transition_id": "a/b", "version": "v3.0.8"}'),
        ("chain.block", "[]"),
    ]
    await publish_raw(bus, [bad[i % len(bad)] for i in range(1000)])

    async def all_rejected() -> bool:
        info = await bus.js.stream_info(ERRORS_STREAM.name, subjects_filter="errors.registry")
        return info.state.messages == 1000

    await eventually(all_rejected, timeout=30, message="1000 rejections on errors.registry")
    after = await get_state(base)
    assert after == before  # same revision: not even a write
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{base}/metrics")).text
    assert 'mlnode_upgrade_events_invalid_total{reason="validation",subject="chain.block"}' in metrics


async def test_queries_over_nats_http_and_grpc(bus: Bus, registries: Registries) -> None:
    _, base, grpc_port = registries.start()
    await publish_raw(
        bus,
        [
            ("chain.version", '{"current_version": "v3.0.6", "height": 1}'),
            ("chain.upgrade.scheduled", '{"height": 100, "node_version": "v3.0.8"}'),
            ("chain.block", '{"height": 2}'),
        ],
    )

    async def seen() -> bool:
        return (await get_state(base)).last_height == 2

    await eventually(seen, message="events processed")

    reply = await bus.nc.request("registry.state", b"{}", timeout=5)
    over_nats = RegistryState.model_validate_json(reply.data)
    assert over_nats == await get_state(base)
    assert over_nats.pending[0].height == 100 and _s(over_nats.current_version) == "v3.0.6"
    history = HistoryReply.model_validate_json(
        (await bus.nc.request("registry.history", b'{"limit": 5}')).data
    )
    assert [t.reason for t in history.transitions] == ["sync"]
    bad = ErrorReply.model_validate_json(
        (await bus.nc.request("registry.rollback", b'{"version": "v9"}')).data
    )
    assert "invalid rollback request" in bad.error

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        got = await stub.GetState(registry_pb2.GetStateRequest(), timeout=5)
        assert got.current_version == "v3.0.6" and [p.height for p in got.pending] == [100]
        watch = stub.WatchState(registry_pb2.WatchStateRequest(), timeout=20)
        first = await watch.read()
        assert first.current_version == "v3.0.6"

        rollback = b'{"version": "v3.0.5", "actor": "ops@example.org", "reason": "drill"}'
        rolled = RegistryState.model_validate_json(
            (await bus.nc.request("registry.rollback", rollback, timeout=5)).data
        )
        assert _s(rolled.current_version) == "v3.0.5" and rolled.rollback_active

        update = await asyncio.wait_for(watch.read(), 10)
        assert update.current_version == "v3.0.5" and update.recent_transitions[-1].reason == "rollback"
        watch.cancel()

    async with httpx.AsyncClient() as client:
        body = {"version": "v3.0.5", "actor": "ops", "reason": "again"}
        anonymous = await client.post(f"{base}/rollback", json=body)
        assert anonymous.status_code == 401
        wrong = await client.post(f"{base}/rollback", json=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        refused = await client.post(f"{base}/rollback", json=body, headers=auth)
        assert refused.status_code == 409 and "already the current" in refused.json()["detail"]
        ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["synced_with_chain"] == {"ok": True}
    changes = await version_changed_messages(bus)
    assert [(c.reason, _s(c.current)) for c in changes][-1] == ("rollback", "v3.0.5")
