"""The staged switch against the all-at-once one and the original's: p99 during the switch vs before.

For each fleet size and model-load time, three runs of the same open-loop load through the broker
across one upgrade: ours with half the fleet staged (loaded on the new version before the height),
ours switching every node at the height, and `bench/baselines/original_broker.py`. A staged run
waits, before the height, until its early nodes are loaded; the block is then committed in the
middle of the load. The figures: p99 before and during (from the block to `during_s` after), the
failed requests, and what the old version's capacity was in the staging window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.harness import NEW, OLD, BenchStack, StackConfig
from bench.loadgen import RawClient, open_loop, sequential
from bench.result import BenchContext, BenchResult, Check
from bench.stats import ratio
from bench.waiting import wait_for
from bench.zero_downtime import PATH, _phase_figures, phases

__all__ = ["run"]

STAGED_ENV = {
    "BROKER_STAGING__SHARE": "0.5",
    "BROKER_STAGING__MARGIN_S": "1",
    # The bench's chain makes blocks on demand: the plan is due as soon as it is known.
    "BROKER_STAGING__DEFAULT_BLOCK_TIME_S": "1000",
}
VARIANTS = ("staged", "all_at_once", "baseline")


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    loads_s: tuple[float, ...]
    variants: tuple[str, ...]
    rate: int
    before_s: float
    after_s: float
    completion_delay_s: float = 0.01

    def during_s(self, load_s: float) -> float:
        return load_s + 3.0


FULL = Plan((2, 10, 100), (2.0, 20.0), VARIANTS, 100, 3.0, 2.0)
QUICK = Plan((2,), (2.0,), ("staged", "all_at_once"), 50, 1.0, 1.0)


async def _staged(stack: BenchStack) -> int:
    status = await stack.broker_status()
    return sum(1 for n in status.get("nodes", []) if n.get("phase") == "staged")


async def run_variant(
    ctx: BenchContext, variant: str, nodes: int, load_s: float, plan: Plan
) -> dict[str, Any]:
    cfg = StackConfig(
        run_dir=ctx.work_dir / f"staged-{variant}-{nodes}-{load_s:g}",
        nodes=nodes,
        model_load_s=load_s,
        completion_delay_s=plan.completion_delay_s,
        broker="baseline" if variant == "baseline" else "ours",
        broker_env=STAGED_ENV if variant == "staged" else {},
        profile=ctx.profile,
    )
    during_s = plan.during_s(load_s)
    async with BenchStack(cfg) as stack:
        await stack.settle(OLD, timeout_s=120 + load_s)
        height = await stack.schedule(NEW)
        staged_at = time.monotonic()
        if variant == "staged":
            early = nodes // 2

            async def loaded() -> bool:
                return await _staged(stack) >= early

            await wait_for(loaded, 60 + 2 * load_s, f"{early} nodes staged on {NEW}", 0.1)
            shown = await stack.call_json("GET", f"{stack.broker_url}/upgrade/readiness")
            window = shown.get("staging") or {}
            capacity = (window.get("old_capacity", 0), window.get("new_capacity", 0))
        else:
            capacity = (1, 0)  # every node serves the old version up to the height
        staging_s = time.monotonic() - staged_at
        client = RawClient("127.0.0.1", stack.broker_port)
        await sequential(client, PATH, 20)
        block: dict[str, float] = {}

        async def commit() -> None:
            await stack.advance(1)
            block["at"] = await stack.block_time(height)

        samples = await open_loop(
            client,
            PATH,
            plan.rate,
            plan.before_s + during_s + plan.after_s,
            at_offsets={plan.before_s: commit},
        )
        client.close()
        stack.check_alive()
        await stack.settle(NEW, timeout_s=120 + load_s)
    by_phase = phases(samples, block["at"], during_s)
    figures = {name: _phase_figures(group) for name, group in by_phase.items()}
    before, during = figures["before"]["p99_ms"], figures["during"]["p99_ms"]
    return {
        "nodes": nodes,
        "model_load_s": load_s,
        "requests": len(samples),
        "failed": sum(not s.ok for s in samples),
        "p99_before_ms": before,
        "p99_during_ms": during,
        "during_to_before": ratio(during, before),
        "phases": figures,
        # In the staging window the old version serves with the nodes not staged (as the broker
        # reports it: the sum of their max_concurrent against the whole fleet's).
        "old_capacity_share_in_window": round(capacity[0] / max(sum(capacity), 1), 3),
        "staging_wait_s": round(staging_s, 3) if variant == "staged" else None,
    }


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    checks: list[Check] = []
    rows: list[tuple[str, str]] = []
    # (`all_at_once` runs with BROKER_STAGING__SHARE=0, as every other benchmark does.)
    for nodes in plan.sizes:
        for load_s in plan.loads_s:
            key = f"{nodes} nodes, {load_s:g} s load"
            results[key] = {}
            for variant in plan.variants:
                found = await run_variant(ctx, variant, nodes, load_s, plan)
                results[key][variant] = found
                ctx.say(
                    f"  {key}, {variant}: p99 {found['p99_before_ms']} -> {found['p99_during_ms']} ms, "
                    f"{found['failed']} failed of {found['requests']}"
                )
            staged = results[key]["staged"]
            checks.append(Check.at_most(f"failed requests, staged, {key}", staged["failed"], 0, "requests"))
            checks.append(
                Check.at_most(f"p99 during / before, staged, {key}", staged["during_to_before"], 2.0, "x")
            )
            rows.append(
                (
                    f"{key}: p99 during|before (ms)",
                    "; ".join(
                        f"{v} {r['p99_during_ms']}|{r['p99_before_ms']} ({r['failed']} failed)"
                        for v, r in results[key].items()
                    )
                    + f"; old capacity in the staged window {staged['old_capacity_share_in_window']:.0%}",
                )
            )
    figures = {"plan": {"rate": plan.rate, "variants": list(plan.variants)}, "runs": results}
    return BenchResult("staged_switch", figures, checks, rows, time.monotonic() - started)
