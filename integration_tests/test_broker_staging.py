"""The staged switch against real processes: part of the fleet loaded before the height."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx

from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    NEW,
    OLD,
    BrokerProcess,
    MLNodeStack,
    RegistryProcess,
    broker_refreshed,
    chain_start,
    serving_on,
)
from integration_tests.support import eventually
from shared.bus import Bus
from shared.events import BlockCommitted, ChainPlan, ChainVersionObserved, UpgradeScheduled
from shared.versions import MLNodeVersion

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
HEIGHT = 30
# Loads of 2 s, blocks taken as 1 s: lead 2 s + 1 s margin = 3 blocks, + 1: staging starts at 26.
STAGING_ENV = {
    "BROKER_STAGING__SHARE": "0.5",
    "BROKER_STAGING__DEFAULT_LOAD_S": "2",
    "BROKER_STAGING__MARGIN_S": "1",
    "BROKER_STAGING__DEFAULT_BLOCK_TIME_S": "1",
}


def staged_fleet(
    bus: Bus, nats: EmbeddedNats, tmp_path: Path, load_s: float
) -> AbstractAsyncContextManager[tuple[MLNodeStack, RegistryProcess, BrokerProcess]]:
    """Two nodes serving OLD from height 10, the broker staging half the fleet."""
    return serving_on(
        bus, nats.url, tmp_path, height=10, broker_env=STAGING_ENV, nodes=2, model_load_s=load_s
    )


def phases(broker: BrokerProcess) -> dict[str, tuple[str, str | None, bool]]:
    return {n["id"]: (n["phase"], n["version"], n["ready"]) for n in broker.status()["nodes"]}


async def test_half_the_fleet_is_loaded_before_the_height_and_takes_the_new_versions_work_at_once(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with staged_fleet(bus, nats_server, tmp_path, load_s=1) as (stack, _, broker):
        await bus.publish(UpgradeScheduled(height=HEIGHT, node_version=MLNodeVersion(NEW)))
        for h in range(11, 26):
            await bus.publish(BlockCommitted(height=h))
        await eventually(
            lambda: (broker.readiness().get("staging") or {}).get("early") == ["node-0"],
            message="the plan is known: node-0 goes early",
        )
        assert broker.readiness()["staging"]["start_height"] == 26
        assert all(p == ("ready", OLD, True) for p in phases(broker).values())  # not due yet

        await bus.publish(BlockCommitted(height=26))
        await eventually(
            lambda: phases(broker)["node-0"] == ("staged", NEW, False),
            timeout=20,
            message="node-0 loaded on the new version ahead of the height",
        )
        assert phases(broker)["node-1"] == ("ready", OLD, True)  # the old version keeps serving
        assert stack.states(OLD)["node-0"] == "STOPPED" and stack.states(NEW)["node-0"] == "INFERENCE"
        async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:
            before = [await client.post("/v1/chat/completions", json=CHAT) for _ in range(5)]
            assert [(r.status_code, r.headers["x-mlnode-version"]) for r in before] == [(200, OLD)] * 5
            assert {r.headers["x-broker-node"] for r in before} == {"node-1"}  # nothing on node-0

            # node-1's load at the height is held 3 s: the new version's first answers can only
            # come from node-0, loaded early.
            stack.fault(NEW, action="delay", route="/api/v1/inference/up", node="node-1", latency_s=3.0)
            await bus.publish(BlockCommitted(height=HEIGHT))
            await eventually(lambda: broker.status()["current_version"] == NEW, message=f"{NEW} is current")
            # At the height node-0 takes the new version's work at once; node-1 is still loading.
            at_once = await client.post("/v1/chat/completions", json=CHAT)
            assert at_once.status_code == 200 and at_once.headers["x-mlnode-version"] == NEW
            assert at_once.headers["x-broker-node"] == "node-0"
            assert phases(broker)["node-1"][2] is False  # still being handed over
            await eventually(lambda: broker.all_ready_on(NEW), timeout=30, message=f"all on {NEW}")
            (up,) = stack.requests(NEW, route="/api/v1/inference/up", node="node-1")
            (first,) = stack.requests(NEW, route="/v1/chat/completions", node="node-0")[:1]
            assert first["ts"] < up["ts"]  # (both logged when answered) while node-1 was still loading
        outcomes = (await broker_refreshed(bus))[-1]["nodes"]
        assert {o["node_id"]: o["outcome"] for o in outcomes} == {"node-0": "ready", "node-1": "ready"}
        assert len(stack.requests(NEW, route="/api/v1/inference/up", node="node-0")) == 1  # once, early
        assert [s["status"] for s in stack.requests(OLD, route="/api/v1/stop", node="node-0")] == [200]


# --- staging when things go wrong --------------------------------------------------------------------


async def _due(bus: Bus) -> None:
    """Every node on OLD: the plan published, the chain at the block staging starts at."""
    await bus.publish(UpgradeScheduled(height=HEIGHT, node_version=MLNodeVersion(NEW)))
    for h in range(11, 27):
        await bus.publish(BlockCommitted(height=h))


async def test_a_broker_killed_while_staging_finishes_the_staging_after_its_restart(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    stack = MLNodeStack(tmp_path, nodes=2, model_load_s=1.5)
    nodes_file = stack.write_nodes_file()
    registry = RegistryProcess(nats_server.url, tmp_path / "logs")
    broker = BrokerProcess(nats_server.url, tmp_path / "logs", nodes_file, **STAGING_ENV)
    registry.start()
    broker.start()
    try:
        await chain_start(bus, OLD, height=10)
        await eventually(lambda: broker.all_ready_on(OLD), timeout=20, message=f"ready on {OLD}")
        await _due(bus)
        await eventually(
            lambda: phases(broker)["node-0"][0] == "staging", timeout=20, message="node-0 staging"
        )
        await eventually(  # (the mock logs a call once answered; the 2 s load comes next)
            lambda: bool(stack.requests(OLD, route="/api/v1/stop", node="node-0")),
            message="node-0's old version stopped for its early load",
        )
        broker.kill()  # SIGKILL in the middle of the early load
        broker = BrokerProcess(nats_server.url, tmp_path / "logs", nodes_file, **STAGING_ENV)
        broker.start()
        await eventually(
            lambda: phases(broker)["node-0"] == ("staged", NEW, False), timeout=30, message="staged again"
        )
        assert phases(broker)["node-1"] == ("ready", OLD, True)
        await bus.publish(BlockCommitted(height=HEIGHT))
        await eventually(lambda: broker.all_ready_on(NEW), timeout=30, message=f"all on {NEW}")
        # The old version is stopped on every node and the target never was.
        assert stack.states(OLD) == {"node-0": "STOPPED", "node-1": "STOPPED"}
        assert stack.requests(NEW, route="/api/v1/stop") == []
    finally:
        broker.stop()
        registry.stop()
        stack.stop()


async def test_a_plan_moved_later_while_staging_hands_the_early_nodes_back(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with staged_fleet(bus, nats_server, tmp_path, load_s=1) as (stack, _, broker):
        await _due(bus)
        await eventually(
            lambda: phases(broker)["node-0"] == ("staged", NEW, False), timeout=20, message="staged"
        )
        # The chain's word: the plan is now at 60 (a new proposal replaced it).
        moved = ChainPlan(height=60, node_version=MLNodeVersion(NEW))
        await bus.publish(ChainVersionObserved(current_version=MLNodeVersion(OLD), height=27, plans=(moved,)))
        await eventually(
            lambda: phases(broker)["node-0"] == ("ready", OLD, True),
            timeout=20,
            message="node-0 back on the old version",
        )
        assert stack.states(NEW)["node-0"] == "STOPPED" and stack.states(OLD)["node-0"] == "INFERENCE"
        assert broker.status()["current_version"] == OLD


async def test_an_early_node_whose_load_fails_is_back_on_the_old_version_before_the_height(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with staged_fleet(bus, nats_server, tmp_path, load_s=0.5) as (stack, _, broker):
        stack.fault(NEW, route="/api/v1/inference/up", node="node-0", status=500, times=0)
        await _due(bus)
        await eventually(
            lambda: len(stack.requests(NEW, route="/api/v1/inference/up", node="node-0")) >= 1,
            timeout=20,
            message="node-0's early load tried",
        )
        await eventually(
            lambda: phases(broker)["node-0"] == ("ready", OLD, True),
            timeout=30,
            message="node-0 back on the old version",
        )
        assert stack.states(OLD)["node-0"] == "INFERENCE"
        assert phases(broker)["node-1"] == ("ready", OLD, True)


async def test_the_api_nodes_calls_to_a_staged_node_are_served_and_its_own_work_wins(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Before the height a staged node runs only the next version. The API node still addresses it:
    its inference is answered by a node serving the current version, its state is read where the
    node runs (a model, nothing to restart), and a management call takes it out of the staging."""
    async with staged_fleet(bus, nats_server, tmp_path, load_s=1) as (stack, _, broker):
        await _due(bus)
        await eventually(
            lambda: phases(broker)["node-0"] == ("staged", NEW, False), timeout=20, message="staged"
        )
        async with httpx.AsyncClient(base_url=f"{broker.url}/nodes/node-0", timeout=30) as node:
            chat = await node.post(f"/{OLD}/v1/chat/completions", json=CHAT)
            assert chat.status_code == 200, chat.text
            assert chat.headers["x-mlnode-version"] == OLD and chat.headers["x-broker-node"] == "node-1"
            state = await node.get("/api/v1/state")
            assert state.json()["state"] == "INFERENCE" and state.headers["x-broker-version"] == NEW
            assert stack.requests(NEW, route="/v1/chat/completions") == []  # no new-version work

            stop = await node.post(f"/{OLD}/api/v1/stop")  # the API node's own decision
            assert stop.status_code == 200, stop.text
            assert stop.headers["x-broker-version"] == OLD
        assert phases(broker)["node-0"] == ("stopped", OLD, False)
        assert stack.states(NEW)["node-0"] == "STOPPED"  # the early load is let go, the GPU freed
        await eventually(
            lambda: not (broker.readiness().get("staging") or {}).get("staged"),
            message="node-0 is no longer shown staged",
        )
        await bus.publish(BlockCommitted(height=HEIGHT))
        await eventually(
            lambda: phases(broker)["node-1"] == ("ready", NEW, True), timeout=30, message="node-1 on NEW"
        )
        await eventually(
            lambda: phases(broker)["node-0"] == ("stopped", NEW, False),
            timeout=30,
            message="node-0 stays stopped: the work the API node gave it is carried",
        )
        assert len(stack.requests(NEW, route="/api/v1/inference/up", node="node-0")) == 1  # the early one


async def test_a_rollback_stages_the_other_way_the_rest_serve_until_the_first_wave_does(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """An operator's rollback has no height to stage ahead of: half the fleet moves first while the
    other half keeps serving the version rolled back from, then the other half follows."""
    async with staged_fleet(bus, nats_server, tmp_path, load_s=1) as (stack, _, broker):
        await bus.publish(UpgradeScheduled(height=HEIGHT, node_version=MLNodeVersion(NEW)))
        await bus.publish(BlockCommitted(height=HEIGHT))  # too late to stage: all at once
        await eventually(lambda: broker.all_ready_on(NEW), timeout=30, message=f"all on {NEW}")

        for n in ("node-0", "node-1"):  # each load back is held, so the wave is seen loading
            stack.fault(OLD, action="delay", route="/api/v1/inference/up", node=n, latency_s=2.0)
        drill = b'{"version": "' + OLD.encode() + b'", "actor": "ops", "reason": "drill"}'
        await bus.nc.request("registry.rollback", drill, timeout=5)
        await eventually(lambda: broker.status()["current_version"] == OLD, message="rolled back")
        async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:
            bridged = await client.post("/v1/chat/completions", json=CHAT)
            assert bridged.status_code == 200, bridged.text
            assert bridged.headers["x-mlnode-version"] == NEW  # served on, not held for the load
            rest = bridged.headers["x-broker-node"]  # the first wave is the faster loader of OLD
            (wave,) = {"node-0", "node-1"} - {rest}
            assert phases(broker)[wave][2] is False  # the first wave is still loading
            await eventually(lambda: broker.all_ready_on(OLD), timeout=40, message=f"all on {OLD}")
            after = await client.post("/v1/chat/completions", json=CHAT)
            assert after.headers["x-mlnode-version"] == OLD
        (wave_up,) = stack.requests(OLD, route="/api/v1/inference/up", node=wave)[-1:]
        (rest_stop,) = stack.requests(NEW, route="/api/v1/stop", node=rest)
        assert rest_stop["ts"] > wave_up["ts"]  # (both logged as answered) the rest went after the wave
        assert stack.states(NEW) == {"node-0": "STOPPED", "node-1": "STOPPED"}
