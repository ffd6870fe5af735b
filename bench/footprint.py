"""Footprint: resident memory of every service, idle and under load, at the largest fleet.

The stack runs the largest fleet of the switch benchmark (the broker keeps a client and a
connection pool per node, so its memory grows with the fleet). Idle is the settled stack
sampled for a few seconds; under load is the peak while inference traffic runs through the
broker and an upgrade hands every node over in the middle of it. RSS is read from
/proc/<pid>/status (VmRSS), nginx with its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import NEW, OLD, BenchStack, StackConfig
from bench.loadgen import RawClient, open_loop
from bench.result import BenchContext, BenchResult, Check

__all__ = ["Plan", "run"]

SERVICES = ("version-registry", "chain-watcher", "broker")
LIMIT_MIB = 100.0
SAMPLE_EVERY_S = 0.2


@dataclass(frozen=True)
class Plan:
    nodes: int
    rate: int
    load_s: float
    block_at_s: float
    idle_s: float
    model_load_s: float


FULL = Plan(nodes=1000, rate=150, load_s=12.0, block_at_s=2.0, idle_s=3.0, model_load_s=1.0)
QUICK = Plan(nodes=10, rate=30, load_s=3.0, block_at_s=1.0, idle_s=1.0, model_load_s=0.3)


async def _sample(
    stack: BenchStack, seconds: float | None, stop: asyncio.Event | None = None
) -> dict[str, float]:
    """Peak RSS per process over `seconds` (or until `stop` is set)."""
    peak: dict[str, float] = {}
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        for name, mib in stack.rss().items():
            if mib is not None:
                peak[name] = max(peak.get(name, 0.0), mib)
        if deadline is not None and time.monotonic() >= deadline:
            return peak
        if stop is not None and stop.is_set():
            return peak
        await asyncio.sleep(SAMPLE_EVERY_S)  # sampling period


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    cfg = StackConfig(
        run_dir=ctx.work_dir / "footprint",
        nodes=plan.nodes,
        model_load_s=plan.model_load_s,
        completion_delay_s=0.01,
        profile=ctx.profile,
    )
    async with BenchStack(cfg) as stack:
        await stack.settle(OLD, timeout_s=120 + plan.nodes * 0.1)
        idle = await _sample(stack, plan.idle_s)
        height = await stack.schedule(NEW)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(stack, None, stop))
        client = RawClient("127.0.0.1", stack.broker_port)

        async def commit() -> None:
            await stack.advance(1)

        loaded: dict[str, float] = {}
        try:
            samples = await open_loop(
                client, "/v1/chat/completions", plan.rate, plan.load_s, at_offsets={plan.block_at_s: commit}
            )
            await stack.settle(NEW, timeout_s=120 + plan.nodes * 0.1)
        finally:
            stop.set()
            client.close()
            with contextlib.suppress(Exception):
                loaded = await sampler
        stack.check_alive()
    failed = sum(not s.ok for s in samples)
    checks = [
        Check.at_most(f"{name} RSS under load", loaded.get(name), LIMIT_MIB, "MiB") for name in SERVICES
    ]
    figures: dict[str, Any] = {
        "nodes": plan.nodes,
        "load_rps": plan.rate,
        "load_s": plan.load_s,
        "upgrade_during_load": {"height": height, "to": NEW},
        "failed_requests": failed,
        "idle_mib": dict(sorted(idle.items())),
        "under_load_peak_mib": dict(sorted(loaded.items())),
    }
    rows = [
        (f"{name} idle / peak under load", f"{idle.get(name)} / {loaded.get(name)} MiB")
        for name in sorted(loaded)
        if name not in SERVICES
    ]
    idle_services = " / ".join(f"{idle.get(n)}" for n in SERVICES)
    rows.insert(0, ("idle RSS (registry, watcher, broker)", f"{idle_services} MiB"))
    return BenchResult("footprint", figures, checks, rows, time.monotonic() - started)
