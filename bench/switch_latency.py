"""Switch latency: from the block at the plan's height to the switch, the route and every node ready.

For each fleet size the stack is started once and upgraded back and forth (v3.0.6 ↔ v3.0.8)
through the real path: a governance proposal on mock_chain, the chain-watcher, the
version-registry, the broker, nginx, the mock MLNodes. Each upgrade stops one block short of the
plan's height, waits until the registry holds the plan, then commits the block and times:

- (a) `version.changed` arriving on NATS,
- (b) the broker closing the old version's gate and routing new requests to the new version
  (its `transition.start` log line: from then on a request waits for the new version instead of
  reaching the old one),
- (c) every node ready on the new version: per node, the first healthy answer after its model
  load finished, from the mock MLNode's request log (the answer on which the broker opens the
  gate again),
- (d) `broker.refreshed` (every outcome persisted and announced),

all against the block's own header time from mock_chain.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.harness import NEW, OLD, BenchError, BenchStack, LogTail, StackConfig, wait_for
from bench.result import BenchContext, BenchResult, Check
from bench.stats import percentile, summarize_ms

__all__ = ["Measured", "Plan", "UpgradeRecord", "measure_upgrades", "run"]


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    upgrades: int
    model_load_s: float
    big_fleet: int = 1000  # from this size on, `big_upgrades` upgrades (each takes longer)
    big_upgrades: int = 5

    def upgrades_at(self, nodes: int) -> int:
        return self.upgrades if nodes <= self.big_fleet else min(self.upgrades, self.big_upgrades)


FULL = Plan(sizes=(1, 10, 100, 1000, 5000), upgrades=20, model_load_s=1.0)
QUICK = Plan(sizes=(1, 10), upgrades=2, model_load_s=0.3)
ROUTE_P99_TARGET_MS = 10.0
# Every node ready this long after its model load, at 1,000 nodes (0.2 s at 100).
READY_MARGIN_S = 0.5
READY_MARGIN_100_S = 0.2
CPU_PER_NODE_TARGET_MS = 0.5  # broker CPU per node handed over, beyond the first 100


@dataclass(frozen=True)
class UpgradeRecord:
    nodes: int
    height: int
    version: str
    changed_s: float  # block -> version.changed on NATS
    route_s: float  # block -> broker routes to the new version
    ready_s: float  # block -> last node ready
    refreshed_s: float  # block -> broker.refreshed
    handover_s: float  # version.changed -> last node ready (the fan-out figure)
    first_ready_s: float  # block -> first node ready
    cpu_s: dict[str, float]  # CPU seconds each process spent from the block to broker.refreshed


@dataclass
class Measured:
    """The switches on one stack, and the memory of its processes (MiB) idle and at their peak."""

    records: list[UpgradeRecord] = field(default_factory=list)
    idle_mib: dict[str, float | None] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)


async def measure_upgrades(ctx: BenchContext, nodes: int, upgrades: int, model_load_s: float) -> Measured:
    """Start a stack with `nodes` fleet nodes and time `upgrades` switches on it."""
    cfg = StackConfig(
        run_dir=ctx.work_dir / f"switch-{nodes}",
        nodes=nodes,
        model_load_s=model_load_s,
        profile=ctx.profile,
    )
    timeout = 60 + nodes * 0.1 + model_load_s * 3
    measured = Measured()
    async with BenchStack(cfg) as stack:
        await stack.settle(OLD, timeout)
        measured.idle_mib = stack.rss()
        sampler = asyncio.create_task(_peak_rss(stack, measured.peak_mib))
        try:
            version = OLD
            for i in range(upgrades):
                version = NEW if version == OLD else OLD
                record = await _switch(stack, nodes, version, timeout)
                measured.records.append(record)
                ctx.say(
                    f"  {nodes} nodes, upgrade {i + 1}/{upgrades}: route {record.route_s * 1000:.1f} ms, "
                    f"all ready {record.ready_s:.2f} s"
                )
        finally:
            sampler.cancel()
    return measured


async def _peak_rss(stack: BenchStack, peak: dict[str, float]) -> None:
    """Keep the peak RSS of every process in `peak` until cancelled."""
    while True:
        for name, mib in stack.rss().items():
            if mib is not None:
                peak[name] = max(peak.get(name, 0.0), mib)
        await asyncio.sleep(0.25)  # sampling period


async def _switch(stack: BenchStack, nodes: int, target: str, limit_s: float) -> UpgradeRecord:
    """One upgrade to `target`, timed against the block's header time."""
    broker_log = LogTail(stack.procs.log_path("broker"))
    await stack.clear_mock_requests()
    height = await stack.schedule(target)
    broker_log.new_lines()  # only lines from the switch on
    tid = f"{height}-{target}"
    cpu_before = stack.cpu()
    await stack.advance(1)
    block_at = await stack.block_time(height)

    async def refreshed() -> bool:
        return tid in stack.events.refreshed

    await wait_for(refreshed, limit_s, f"broker.refreshed for {tid}")
    cpu_after = stack.cpu()
    route_at = next(
        (
            LogTail.ts(line)
            for line in broker_log.new_lines()
            if line.get("event") == "transition.start" and line.get("transition") == tid
        ),
        None,
    )
    ready = await stack.nodes_ready_at(target, block_at)
    changed_at = stack.events.changed.get(tid)
    outcomes = {n["outcome"] for n in stack.events.refreshed_body[tid].get("nodes", [])}
    if route_at is None or changed_at is None or len(ready) != nodes or outcomes != {"ready"}:
        raise BenchError(
            f"upgrade {tid}: route={route_at} changed={changed_at} ready={len(ready)}/{nodes} "
            f"outcomes={outcomes}"
        )
    await stack.settle(target, limit_s)
    return UpgradeRecord(
        nodes=nodes,
        height=height,
        version=target,
        changed_s=changed_at - block_at,
        route_s=route_at - block_at,
        ready_s=max(ready.values()) - block_at,
        refreshed_s=stack.events.refreshed[tid] - block_at,
        handover_s=max(ready.values()) - changed_at,
        first_ready_s=min(ready.values()) - block_at,
        cpu_s={k: round(v - cpu_before.get(k, 0.0), 3) for k, v in cpu_after.items()},
    )


def summarize(records: list[UpgradeRecord], model_load_s: float) -> dict[str, Any]:
    return {
        "upgrades": len(records),
        "model_load_s": model_load_s,
        "version_changed": summarize_ms([r.changed_s for r in records]),
        "route_switched": summarize_ms([r.route_s for r in records]),
        "first_node_ready": summarize_ms([r.first_ready_s for r in records]),
        "all_nodes_ready": summarize_ms([r.ready_s for r in records]),
        "broker_refreshed": summarize_ms([r.refreshed_s for r in records]),
    }


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    sizes, load = ctx.nodes or plan.sizes, plan.model_load_s
    started = time.monotonic()
    by_size: dict[str, Any] = {}
    all_records: dict[int, list[UpgradeRecord]] = {}
    for nodes in sizes:
        measured = await measure_upgrades(ctx, nodes, plan.upgrades_at(nodes), load)
        all_records[nodes] = measured.records
        by_size[str(nodes)] = {
            **summarize(measured.records, load),
            "broker_rss_mib": {
                "idle": measured.idle_mib.get("broker"),
                "peak": measured.peak_mib.get("broker"),
            },
            "broker_cpu_s_per_switch_p50": percentile(
                [r.cpu_s.get("broker", 0.0) for r in measured.records], 50
            ),
        }
    ctx.shared["switch_records"] = {"model_load_s": load, "records": all_records}

    growth = cpu_growth(by_size)
    ctx.shared["switch_cpu_growth"] = growth
    checks: list[Check] = []
    for nodes, margin in ((1000, READY_MARGIN_S), (100, READY_MARGIN_100_S)):
        if nodes in all_records:
            ready_p99 = percentile([r.ready_s for r in all_records[nodes]], 99)
            checks.append(
                Check.at_most(f"all nodes ready p99 at {nodes} nodes", _r(ready_p99, 3), load + margin, "s")
            )
    route_at = 1000 if 1000 in all_records else max(sizes)
    route_p99 = percentile([r.route_s * 1000 for r in all_records[route_at]], 99)
    checks.append(
        Check.at_most(f"route switch p99 at {route_at} nodes", _r(route_p99), ROUTE_P99_TARGET_MS, "ms")
    )
    for step in growth:
        checks.append(
            Check.at_most(
                f"broker CPU per extra node handed over, {step['from']} to {step['to']} nodes",
                step["ms_per_node"],
                CPU_PER_NODE_TARGET_MS,
                "ms",
            )
        )
    rows = []
    for nodes in sizes:
        s = by_size[str(nodes)]
        rows.append(
            (
                f"{nodes} nodes: changed / route / all ready / refreshed (p50 | p99)",
                " / ".join(
                    f"{s[k]['p50_ms']:.0f}|{s[k]['p99_ms']:.0f} ms"
                    for k in ("version_changed", "route_switched", "all_nodes_ready", "broker_refreshed")
                ),
            )
        )
    rows.append(
        (
            "broker CPU per switch p50, by fleet size",
            ", ".join(f"{n}: {by_size[str(n)]['broker_cpu_s_per_switch_p50']} s" for n in sizes),
        )
    )
    rows.append(
        (
            "broker RSS idle / peak, by fleet size",
            ", ".join("{}: {idle}/{peak}".format(n, **by_size[str(n)]["broker_rss_mib"]) for n in sizes)
            + " MiB",
        )
    )
    figures = {
        "sizes": by_size,
        "broker_cpu_growth": growth,
        "records": {str(n): [asdict(r) for r in recs] for n, recs in all_records.items()},
    }
    return BenchResult("switch_latency", figures, checks, rows, time.monotonic() - started)


def cpu_growth(by_size: dict[str, Any]) -> list[dict[str, Any]]:
    """Broker CPU per node between consecutive fleet sizes from 100 on: the cost's shape."""
    sizes = sorted(int(n) for n in by_size if int(n) >= 100)
    steps: list[dict[str, Any]] = []
    for low, high in itertools.pairwise(sizes):
        a = by_size[str(low)]["broker_cpu_s_per_switch_p50"]
        b = by_size[str(high)]["broker_cpu_s_per_switch_p50"]
        if a is None or b is None:
            continue
        steps.append({"from": low, "to": high, "ms_per_node": round((b - a) * 1000 / (high - low), 3)})
    return steps


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
