"""The broker against real processes: nats-server, the version-registry, mock MLNodes behind nginx.

The chain is played by publishing what the chain-watcher would (a version snapshot, a scheduled
plan, the block at its height); the registry decides the switch and the broker carries it out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    MODEL,
    NEW,
    OLD,
    BrokerProcess,
    MLNodeStack,
    RegistryProcess,
    broker_refreshed,
    chain_start,
    chain_switch,
    refreshed_for,
)
from integration_tests.support import eventually
from shared.bus import Bus
from shared.events import UpgradeScheduled
from shared.versions import MLNodeVersion

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def registry(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(nats_server.url, tmp_path / "logs")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[MLNodeStack]:
    stack = MLNodeStack(tmp_path, nodes=1)
    yield stack
    stack.stop()


def start_broker(nats: EmbeddedNats, stack: MLNodeStack, tmp: Path, **env: str) -> BrokerProcess:
    broker = BrokerProcess(nats.url, tmp / "logs", stack.write_nodes_file(), **env)
    broker.start()
    return broker


async def serving(broker: BrokerProcess, version: str, within: float = 20) -> None:
    await eventually(
        lambda: broker.all_ready_on(version), timeout=within, message=f"every node ready on {version}"
    )


async def chat(broker: BrokerProcess) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{broker.url}/v1/chat/completions", json=CHAT)


def posts(stack: MLNodeStack, version: str, route: str) -> list[dict[str, Any]]:
    return stack.requests(version, route=route, method="POST")


async def test_at_the_switch_the_old_version_gets_one_stop_and_the_new_one_the_gpu(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, stack: MLNodeStack, tmp_path: Path
) -> None:
    broker = start_broker(nats_server, stack, tmp_path)
    try:
        await chain_start(bus, OLD)
        await serving(broker, OLD)
        before = await chat(broker)
        assert before.status_code == 200 and before.headers["x-mlnode-version"] == OLD
        await eventually(lambda: registry.state()["last_used_version"] == OLD, message="registry: last_used")

        await chain_switch(bus, height=20, version=NEW)
        await serving(broker, NEW)
        await eventually(lambda: registry.state()["last_used_version"] == NEW, message="registry: last_used")

        after = await chat(broker)
        assert after.status_code == 200 and after.headers["x-mlnode-version"] == NEW
        assert f"[{NEW}]" in after.json()["choices"][0]["message"]["content"]

        stops = posts(stack, OLD, "/api/v1/stop")
        assert [(s["status"], s["node"]) for s in stops] == [(200, "node-0")]  # exactly one, answered
        assert posts(stack, NEW, "/api/v1/stop") == []  # the new version is never stopped
        ups = posts(stack, NEW, "/api/v1/inference/up")
        assert [u["status"] for u in ups] == [200]
        assert stack.instances(OLD)["node-0"]["gpu_held"] is False
        new = stack.instances(NEW)["node-0"]
        assert (new["state"], new["model"], new["gpu_held"]) == ("INFERENCE", MODEL, True)
        # The stop happened before the new version was asked to load (the GPU was free for it).
        assert stops[0]["ts"] <= ups[0]["ts"]

        refreshed = await refreshed_for(bus, NEW)
        assert refreshed["previous"] == OLD and refreshed["nodes"][0]["outcome"] == "ready"

        # Every log line about the switch names the event, version, transition, height and node.
        switch_lines = [
            line
            for line in broker.log_lines()
            if line.get("event", "").startswith(("handoff.", "stop."))
            and line.get("transition") == f"20-{NEW}"
        ]
        assert switch_lines
        for line in switch_lines:
            assert line["version"] == NEW and line["height"] == 20 and line["node"] == "node-0"
    finally:
        broker.stop()


async def test_stop_failing_with_500_twice_is_retried_and_confirmed(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, stack: MLNodeStack, tmp_path: Path
) -> None:
    broker = start_broker(nats_server, stack, tmp_path)
    try:
        await chain_start(bus, OLD)
        await serving(broker, OLD)
        stack.fault(OLD, route="/api/v1/stop", action="fail", status=500, times=2)
        await chain_switch(bus, height=20, version=NEW)
        await serving(broker, NEW)
        stops = posts(stack, OLD, "/api/v1/stop")
        assert [s["status"] for s in stops] == [500, 500, 200]
        states = stack.requests(OLD, route="/api/v1/state", method="GET")
        assert states and states[-1]["ts"] > stops[-1]["ts"]  # confirmed by reading the state after
        assert stack.states(OLD) == {"node-0": "STOPPED"}
        refreshed = await refreshed_for(bus, NEW)
        assert refreshed["nodes"][0]["outcome"] == "ready"
    finally:
        broker.stop()


async def test_unreachable_old_version_is_reported_and_stopped_once_it_comes_back(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, stack: MLNodeStack, tmp_path: Path
) -> None:
    broker = start_broker(nats_server, stack, tmp_path)
    try:
        await chain_start(bus, OLD)
        await serving(broker, OLD)
        old_port = stack.kill(OLD)  # the old container died; its GPU is free

        await chain_switch(bus, height=20, version=NEW)
        await serving(broker, NEW)  # did not block the switch
        refreshed = await refreshed_for(bus, NEW)
        (outcome,) = refreshed["nodes"]
        assert outcome["outcome"] == "stop_pending"
        assert "stop of v3.0.6 not confirmed" in outcome["detail"] and "502" in outcome["detail"]
        (pending,) = broker.status()["pending_stops"]
        assert (pending["node_id"], pending["version"]) == ("node-0", OLD)
        served = await chat(broker)
        assert served.status_code == 200 and served.headers["x-mlnode-version"] == NEW

        stack.revive(OLD, old_port)
        await eventually(
            lambda: broker.status()["pending_stops"] == [], timeout=15, message="pending stop done"
        )
        stops = posts(stack, OLD, "/api/v1/stop")
        assert [s["status"] for s in stops] == [200]
        assert stack.requests(OLD, route="/api/v1/state", method="GET")[-1]["status"] == 200
        assert posts(stack, NEW, "/api/v1/stop") == []
        assert stack.states(NEW) == {"node-0": "INFERENCE"}
    finally:
        broker.stop()


@pytest.mark.parametrize("kill_in_phase", ["drain", "bring_up"])
async def test_sigkilled_broker_restarts_and_stops_the_old_version_never_the_new(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, tmp_path: Path, kill_in_phase: str
) -> None:
    # A slow answer on the old version keeps the handoff draining; a 1.5 s load keeps it bringing up.
    slow: dict[str, tuple[str, ...]] = {}
    if kill_in_phase == "drain":
        slow[OLD] = ("--completion-delay-s", "30")
    stack = MLNodeStack(tmp_path, nodes=1, model_load_s=1.5, extra=slow)
    broker = start_broker(nats_server, stack, tmp_path, BROKER_HANDOFF__DRAIN_TIMEOUT_S="25")
    client = httpx.AsyncClient(timeout=60)
    try:
        await chain_start(bus, OLD)
        await serving(broker, OLD)
        await eventually(lambda: registry.state()["last_used_version"] == OLD, message="registry: last_used")
        held = None
        if kill_in_phase == "drain":
            held = asyncio.create_task(client.post(f"{broker.url}/v1/chat/completions", json=CHAT))
            await eventually(
                lambda: stack.instances(OLD)["node-0"]["in_flight"] == 1,
                message="a request in flight on v3.0.6",
            )

        await chain_switch(bus, height=20, version=NEW)
        await eventually(
            lambda: broker.status()["nodes"][0]["phase"] == kill_in_phase, timeout=15, message=kill_in_phase
        )
        broker.kill()
        assert len(posts(stack, OLD, "/api/v1/stop")) == (0 if kill_in_phase == "drain" else 1)
        if held is not None:
            with pytest.raises(httpx.HTTPError):
                await held  # it dies with the broker
    except BaseException:
        broker.kill()
        stack.stop()
        raise
    finally:
        await client.aclose()

    restarted = BrokerProcess(nats_server.url, tmp_path / "logs2", stack.write_nodes_file())
    restarted.start()
    try:
        await serving(restarted, NEW, within=30)
        assert stack.states(OLD) == {"node-0": "STOPPED"}
        assert stack.states(NEW) == {"node-0": "INFERENCE"}
        assert posts(stack, NEW, "/api/v1/stop") == []  # never the new version
        stops = posts(stack, OLD, "/api/v1/stop")
        assert len(stops) == (1 if kill_in_phase == "drain" else 2) and stops[-1]["status"] == 200
        await eventually(lambda: registry.state()["last_used_version"] == NEW, message="registry: last_used")
        refreshed = [r for r in await broker_refreshed(bus) if r["version"] == NEW]
        assert len(refreshed) == 1
        if kill_in_phase == "bring_up":  # the load under way was waited for, not started twice
            ups = [u["status"] for u in posts(stack, NEW, "/api/v1/inference/up")]
            assert ups.count(200) == 1 and set(ups) <= {200, 409}  # the restarted one learnt of it by a 409
    finally:
        restarted.stop()
        stack.stop()


async def test_readiness_shows_a_node_without_a_route_for_the_new_version_before_the_height(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, tmp_path: Path
) -> None:
    # nginx routes only the old version: /v3.0.8/... falls into `location /` and gets a 404.
    stack = MLNodeStack(tmp_path, nodes=1, routed=(OLD,))
    broker = start_broker(nats_server, stack, tmp_path)
    try:
        await chain_start(bus, OLD, height=5)
        await serving(broker, OLD)
        await bus.publish(UpgradeScheduled(height=1000, node_version=MLNodeVersion(NEW)))

        def report() -> dict[str, Any]:
            return dict(httpx.get(f"{broker.url}/upgrade/readiness", timeout=5).json())

        await eventually(lambda: report()["target_version"] == NEW, timeout=10, message="readiness probed")
        body = report()
        assert body["height"] == 1000 and body["all_ready"] is False
        (node,) = body["nodes"]
        assert node["node_id"] == "node-0" and not node["ready"]
        assert f"/{NEW}/node-0/api/v1/state: 404" in node["reason"]
        async with httpx.AsyncClient(timeout=5) as client:
            metrics = (await client.get(f"{broker.url}/metrics")).text
        assert 'mlnode_upgrade_broker_target_ready{node="node-0",version="v3.0.8"} 0.0' in metrics
        assert registry.state()["last_height"] < 1000  # all of this before the height
    finally:
        broker.stop()
        stack.stop()


async def test_streaming_passes_through_the_broker_chunk_by_chunk(
    bus: Bus, nats_server: EmbeddedNats, registry: RegistryProcess, tmp_path: Path
) -> None:
    delay = 0.15
    stack = MLNodeStack(tmp_path, nodes=1, extra={OLD: ("--stream-chunk-delay-s", str(delay))})
    broker = start_broker(nats_server, stack, tmp_path)
    try:
        await chain_start(bus, OLD)
        await serving(broker, OLD)
        arrivals: list[float] = []
        started = time.monotonic()
        with httpx.stream(
            "POST", f"{broker.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
        ) as resp:
            assert resp.status_code == 200 and resp.headers["x-mlnode-version"] == OLD
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 8 + 3 and arrivals[-1] >= delay * 8
        assert arrivals[0] < arrivals[-1] / 3  # the first event came early, not with the last
    finally:
        broker.stop()
        stack.stop()
