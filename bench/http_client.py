"""HTTP client cost: the broker's management call through httpx against its wire client.

Both clients make the same `GET /{version}/node-N/api/v1/state` calls through the real nginx to
the mock MLNode, 50 at a time across 50 nodes (as a switch does), each client with a pool per
node as the broker keeps them. The figure is the CPU this process spends per call (the client's
cost; the server's is the same for both), and the wall time per call. This is the measurement
behind the broker's choice of client for the handoff calls (`services/broker/wire_client.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import OLD, BenchStack, StackConfig
from bench.result import BenchContext, BenchResult, Check
from bench.stats import ratio
from services.broker.wire_client import WirePool, origin_and_target

__all__ = ["Plan", "run"]

CALL_CPU_TARGET_MS = 0.1  # five of them per node stay within the handoff's 0.5 ms


@dataclass(frozen=True)
class Plan:
    calls: int
    nodes: int
    rounds: int


FULL = Plan(calls=5000, nodes=50, rounds=3)
QUICK = Plan(calls=300, nodes=10, rounds=1)

Call = Callable[[int], Awaitable[None]]


async def _measure(call: Call, plan: Plan) -> dict[str, float]:
    per_node = plan.calls // plan.nodes

    async def node(i: int) -> None:
        for _ in range(per_node):
            await call(i)

    await asyncio.gather(*(call(i) for i in range(plan.nodes)))  # connections up, code warm
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(node(i) for i in range(plan.nodes)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    calls = per_node * plan.nodes
    return {
        "cpu_ms_per_call": round(cpu * 1000 / calls, 4),
        "wall_ms_per_call": round(wall * 1000 / calls, 4),
    }


async def compare(port: int, plan: Plan) -> dict[str, Any]:
    urls = [f"http://127.0.0.1:{port}/{OLD}/node-{i}/api/v1/state" for i in range(plan.nodes)]
    clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=8)) for _ in urls]
    origin, _ = origin_and_target(urls[0])
    pools = [WirePool(origin, 8, 2.0) for _ in urls]
    targets = [origin_and_target(u)[1] for u in urls]
    timeout = httpx.Timeout(10.0, connect=2.0)

    async def via_httpx(i: int) -> None:
        resp = await clients[i].get(urls[i], timeout=timeout)
        if resp.status_code != 200 or "state" not in resp.json():
            raise RuntimeError(f"httpx: unexpected answer {resp.status_code} {resp.text[:100]}")

    async def via_wire(i: int) -> None:
        resp = await pools[i].request("GET", targets[i], None, 10.0)
        if resp.status != 200 or "state" not in resp.json():
            raise RuntimeError(f"wire: unexpected answer {resp.status} {resp.text[:100]}")

    runs: dict[str, list[dict[str, float]]] = {"httpx": [], "wire": []}
    try:
        for _ in range(plan.rounds):  # interleaved, so drift on a shared machine hits both
            runs["httpx"].append(await _measure(via_httpx, plan))
            runs["wire"].append(await _measure(via_wire, plan))
    finally:
        for client in clients:
            await client.aclose()
        for pool in pools:
            await pool.aclose()
    best = {k: min(v, key=lambda r: r["cpu_ms_per_call"]) for k, v in runs.items()}
    return {"runs": runs, "best": best}


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    cfg = StackConfig(
        run_dir=ctx.work_dir / "http-client",
        nodes=plan.nodes,
        chain=False,
        registry=False,
        broker="none",
        profile=ctx.profile,
    )
    async with BenchStack(cfg) as stack:
        measured = await compare(stack.nginx_port, plan)
    best = measured["best"]
    httpx_ms, wire_ms = best["httpx"]["cpu_ms_per_call"], best["wire"]["cpu_ms_per_call"]
    ctx.say(f"  CPU per call: httpx {httpx_ms} ms, wire {wire_ms} ms")
    figures = {
        "plan": {"calls": plan.calls, "nodes": plan.nodes, "rounds": plan.rounds},
        **measured,
        "httpx_to_wire_cpu": ratio(httpx_ms, wire_ms),
    }
    checks = [Check.at_most("management call CPU (wire client)", wire_ms, CALL_CPU_TARGET_MS, "ms")]
    rows = [
        ("CPU per call httpx / wire", f"{httpx_ms} / {wire_ms} ms (x{figures['httpx_to_wire_cpu']})"),
        (
            "wall per call httpx / wire (50 at once)",
            f"{best['httpx']['wall_ms_per_call']} / {best['wire']['wall_ms_per_call']} ms",
        ),
    ]
    return BenchResult("http_client", figures, checks, rows, time.monotonic() - started)
