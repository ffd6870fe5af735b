"""Zero downtime under load, and a large fleet switched at once; both print their figures.

Set BROKER_BENCH_OUT=/path/file.json to also get the figures as JSON (one object per test).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    NEW,
    OLD,
    BrokerProcess,
    MLNodeStack,
    RegistryProcess,
    chain_start,
    chain_switch,
    refreshed_for,
)
from integration_tests.support import eventually
from shared.bus import Bus

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def report(capsys: pytest.CaptureFixture[str], name: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[{name}] " + json.dumps(figures))
    out = os.environ.get("BROKER_BENCH_OUT")
    if out:
        with Path(out).open("a") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


@pytest.fixture
def registry(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(nats_server.url, tmp_path / "logs")
    proc.start()
    yield proc
    proc.stop()


@dataclass
class Result:
    started: float  # seconds since the load began
    latency: float
    ok: bool
    version: str
    stream: bool
    error: str = ""


async def one_request(client: httpx.AsyncClient, url: str, stream: bool, t0: float) -> Result:
    started = time.monotonic()
    try:
        if stream:
            async with client.stream("POST", url, json={**CHAT, "stream": True}) as resp:
                lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
                ok = resp.status_code == 200 and lines[-1:] == ["data: [DONE]"] and len(lines) == 11
                version, error = resp.headers.get("x-mlnode-version", ""), "" if ok else f"{resp.status_code}"
        else:
            resp = await client.post(url, json=CHAT)
            ok = resp.status_code == 200 and "choices" in resp.json()
            version, error = resp.headers.get("x-mlnode-version", ""), "" if ok else resp.text[:200]
    except httpx.HTTPError as exc:
        ok, version, error = False, "", repr(exc)
    return Result(started - t0, time.monotonic() - started, ok, version, stream, error)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def test_50_requests_per_second_through_a_switch_with_a_2s_model_load_fail_none(
    bus: Bus,
    nats_server: EmbeddedNats,
    registry: RegistryProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rate, seconds, switch_at = 50, 7.0, 2.0
    stack = MLNodeStack(
        tmp_path,
        nodes=2,
        model_load_s=2.0,
        extra={v: ("--completion-delay-s", "0.02", "--stream-chunk-delay-s", "0.01") for v in (OLD, NEW)},
    )
    broker = BrokerProcess(nats_server.url, tmp_path / "logs", stack.write_nodes_file())
    broker.start()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    try:
        await chain_start(bus, OLD)
        await eventually(lambda: broker.all_ready_on(OLD), timeout=20, message="serving v3.0.6")
        url = f"{broker.url}/v1/chat/completions"
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            t0 = time.monotonic()
            tasks: list[asyncio.Task[Result]] = []
            switched_at: float | None = None
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))  # pacing the load
                if switched_at is None and i / rate >= switch_at:
                    switched_at = time.monotonic() - t0
                    await chain_switch(bus, height=20, version=NEW)
                tasks.append(asyncio.create_task(one_request(client, url, i % 5 == 0, t0)))
            sent_for = time.monotonic() - t0
            results = await asyncio.gather(*tasks)
        assert switched_at is not None
        failed = [r for r in results if not r.ok]
        assert failed == [], f"{len(failed)} failed, e.g. {failed[:3]}"
        assert broker.all_ready_on(NEW)
        # Answered before the switch was published: by the old version. (Not "started before": a
        # loaded machine may delay the test's own send past the switch, and the new version then
        # rightly answers it.)
        assert {r.version for r in results if r.started + r.latency < switched_at} == {OLD}
        assert {r.version for r in results if r.started > switched_at + 3.5} == {NEW}
        refreshed = await refreshed_for(bus, NEW)
        assert [n["outcome"] for n in refreshed["nodes"]] == ["ready", "ready"]
        assert [len(stack.requests(OLD, route="/api/v1/stop", node=f"node-{i}")) for i in (0, 1)] == [1, 1]

        plain = [r for r in results if not r.stream]
        baseline = [r.latency for r in plain if r.started < switched_at]
        during = [r for r in plain if switched_at <= r.started <= switched_at + 3.0]
        waited = [r.latency for r in during]
        added = max(waited) - statistics.median(baseline)
        report(
            capsys,
            "broker 50 rps through a switch (2 s model load)",
            {
                "requests": len(results),
                "streams": sum(r.stream for r in results),
                "failed": len(failed),
                "offered_rps": round(len(results) / sent_for, 1),
                "baseline_p50_ms": ms(statistics.median(baseline)),
                "baseline_p99_ms": ms(pct(baseline, 0.99)),
                "switch_window_requests": len(during),
                "switch_window_p50_ms": ms(statistics.median(waited)),
                "switch_window_max_ms": ms(max(waited)),
                "added_latency_max_ms": ms(added),
            },
        )
        # The wait is the handoff (drain, stop, 2 s load, health), not a timeout or retry storm:
        # nothing is answered by the new version before its model has loaded, and nobody waits
        # much longer. (Measured from the switch, not from a request's start: under load the test's
        # own loop may start the first request after the switch late, and it then waits less.)
        first_new = min(r.started + r.latency for r in plain if r.version == NEW)
        assert first_new - switched_at >= 2.0
        assert max(waited) < 8.0
    finally:
        broker.stop()
        stack.stop()


async def test_200_nodes_in_fleet_mode_hand_over_concurrently(
    bus: Bus,
    nats_server: EmbeddedNats,
    registry: RegistryProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nodes = 200
    stack = MLNodeStack(tmp_path, nodes=nodes, model_load_s=2.0)
    broker = BrokerProcess(nats_server.url, tmp_path / "logs", stack.write_nodes_file())
    broker.start()
    seen: dict[str, float] = {}

    async def stamp(msg: Any) -> None:
        body = json.loads(msg.data)
        seen.setdefault(f"{msg.subject}:{body.get('current') or body.get('version')}", time.monotonic())

    await bus.nc.subscribe("version.changed", cb=stamp)
    await bus.nc.subscribe("broker.refreshed", cb=stamp)
    try:
        await chain_start(bus, OLD)
        await eventually(lambda: f"broker.refreshed:{OLD}" in seen, timeout=60, message="200 nodes on v3.0.6")
        bootstrap = seen[f"broker.refreshed:{OLD}"] - seen[f"version.changed:{OLD}"]
        assert broker.all_ready_on(OLD)

        await chain_switch(bus, height=20, version=NEW)
        await eventually(lambda: f"broker.refreshed:{NEW}" in seen, timeout=60, message="200 nodes on v3.0.8")
        handover = seen[f"broker.refreshed:{NEW}"] - seen[f"version.changed:{NEW}"]
        assert broker.all_ready_on(NEW)

        refreshed = await refreshed_for(bus, NEW)
        assert len(refreshed["nodes"]) == nodes and {n["outcome"] for n in refreshed["nodes"]} == {"ready"}
        stops = stack.requests(OLD, route="/api/v1/stop", method="POST")
        assert sorted(s["node"] for s in stops) == sorted(f"node-{i}" for i in range(nodes))  # one each
        assert stack.requests(NEW, route="/api/v1/stop", method="POST") == []
        assert set(stack.states(OLD).values()) == {"STOPPED"}
        assert set(stack.states(NEW).values()) == {"INFERENCE"}
        report(
            capsys,
            "broker 200 nodes, fleet mode, 2 s model load",
            {
                "nodes": nodes,
                "version_changed_to_all_ready_s": round(handover, 3),
                "bootstrap_all_up_s": round(bootstrap, 3),
                "model_load_s": 2.0,
            },
        )
        assert handover < 2.0 + 10.0  # concurrent: one model load plus overhead, not 200 of them
    finally:
        broker.stop()
        stack.stop()
