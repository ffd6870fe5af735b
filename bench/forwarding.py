"""Forwarding overhead: broker → nginx → mock against nginx → mock, and the broker's sustainable rate.

Latency is measured closed-loop (one request at a time, the two paths interleaved request by
request so drift hits both alike) against a mock that answers at once: the difference of the
medians is what the broker adds to a request. The sustainable rate is found open-loop: steps of
rising constant rate through the broker, each held for a few seconds, until p99 exceeds 50 ms or
a request fails; CPU seconds per request of every process are recorded at each step, because on
2 cores the broker shares the CPU with nginx, the mock and the load generator.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import OLD, BenchStack, StackConfig
from bench.loadgen import RawClient, Sample, open_loop, sequential
from bench.result import BenchContext, BenchResult, Check
from bench.stats import percentile, step_rates, summarize_ms

__all__ = ["Plan", "run"]

PATH = "/v1/chat/completions"
OVERHEAD_P50_TARGET_MS = 1.0
RATE_TARGET = 2000  # requests per second with p99 <= 50 ms
P99_LIMIT_MS = 50.0


@dataclass(frozen=True)
class Plan:
    pairs: int  # closed-loop requests per path
    start_rate: float
    factor: float
    max_rate: float
    step_s: float
    nodes: int


FULL = Plan(pairs=2000, start_rate=50, factor=1.25, max_rate=2500, step_s=4.0, nodes=4)
QUICK = Plan(pairs=150, start_rate=50, factor=2.0, max_rate=100, step_s=1.5, nodes=2)


async def _interleaved(
    broker: RawClient, direct: RawClient, direct_path: str, pairs: int
) -> tuple[list[Sample], list[Sample]]:
    via_broker: list[Sample] = []
    via_nginx: list[Sample] = []
    for _ in range(pairs):
        via_broker += await sequential(broker, PATH, 1)
        via_nginx += await sequential(direct, direct_path, 1)
    return via_broker, via_nginx


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    cfg = StackConfig(
        run_dir=ctx.work_dir / "forwarding",
        nodes=plan.nodes,
        model_load_s=0.2,
        completion_delay_s=0.0,
        max_concurrent=500,
        profile=ctx.profile,
    )
    steps: list[dict[str, Any]] = []
    async with BenchStack(cfg) as stack:
        await stack.settle(OLD)
        broker = RawClient("127.0.0.1", stack.broker_port)
        nginx = RawClient("127.0.0.1", stack.nginx_port)
        direct_path = f"/{OLD}/node-0{PATH}"
        await _interleaved(broker, nginx, direct_path, 50)  # warm-up
        via_broker, via_nginx = await _interleaved(broker, nginx, direct_path, plan.pairs)
        broker.close()
        nginx.close()

        sustained: float | None = None
        for rate in step_rates(plan.start_rate, plan.factor, plan.max_rate):
            client = RawClient("127.0.0.1", stack.broker_port)
            cpu_before = stack.cpu()
            samples = await open_loop(client, PATH, rate, plan.step_s)
            cpu_after = stack.cpu()
            client.close()
            ok = [s.latency_s for s in samples if s.ok]
            p99 = percentile(ok, 99)
            failed = sum(not s.ok for s in samples)
            passed = failed == 0 and p99 is not None and p99 * 1000 <= P99_LIMIT_MS
            steps.append(
                {
                    "rate": rate,
                    "failed": failed,
                    **summarize_ms(ok),
                    "passed": passed,
                    "cpu_ms_per_request": {
                        k: round((v - cpu_before.get(k, 0.0)) * 1000 / max(len(samples), 1), 3)
                        for k, v in cpu_after.items()
                        if v - cpu_before.get(k, 0.0) > 0.005
                    },
                }
            )
            ctx.say(f"  {rate:.0f} rps: p99 {steps[-1]['p99_ms']} ms, failed {failed}")
            if not passed:
                break
            sustained = rate
        stack.check_alive()

    bound = cpu_bound(steps)
    b, n = summarize_ms([s.latency_s for s in via_broker]), summarize_ms([s.latency_s for s in via_nginx])
    overhead_p50 = _diff(b["p50_ms"], n["p50_ms"])
    overhead_p99 = _diff(b["p99_ms"], n["p99_ms"])
    figures = {
        "closed_loop_requests_per_path": plan.pairs,
        "via_broker": b,
        "direct_nginx": n,
        "failed": sum(not s.ok for s in via_broker + via_nginx),
        "overhead_p50_ms": overhead_p50,
        "overhead_p99_ms": overhead_p99,
        "max_rate_p99_under_50ms": sustained,
        "rate_steps": steps,
        "cpu_bound": bound,
        "rate_step_s": plan.step_s,
    }
    checks = [
        Check.at_most("forwarding overhead p50", overhead_p50, OVERHEAD_P50_TARGET_MS, "ms"),
        Check.at_least("highest rate with p99 <= 50 ms", sustained, RATE_TARGET, "rps"),
    ]
    rows = [
        ("broker->nginx->mock p50|p99", f"{b['p50_ms']}|{b['p99_ms']} ms"),
        ("nginx->mock p50|p99", f"{n['p50_ms']}|{n['p99_ms']} ms"),
        ("overhead p99", f"{overhead_p99} ms"),
        ("highest rate with p99 <= 50 ms", f"{sustained} rps (steps x{plan.factor}, {plan.step_s:g} s each)"),
        (
            "CPU per request at the last passing step, and the rate it allows",
            ", ".join(f"{k} {v} ms" for k, v in bound["cpu_ms_per_request"].items())
            + f"; broker's one loop: {bound['broker_loop_rps']} rps, the stack on"
            f" {bound['cores']} cores: {bound['stack_rps']} rps",
        ),
    ]
    return BenchResult("forwarding", figures, checks, rows, time.monotonic() - started)


def cpu_bound(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """What the CPU each request costs allows: the broker's one event loop can carry at most
    1 s / its CPU per request, and the machine at most its cores / the whole stack's (broker,
    nginx, the mock; the load generator's own share not counted)."""
    passing = [s for s in steps if s["passed"]] or steps[:1]
    if not passing:
        return {"cpu_ms_per_request": {}, "broker_loop_rps": None, "stack_rps": None, "cores": 0}
    per_request: dict[str, float] = passing[-1]["cpu_ms_per_request"]
    broker = per_request.get("broker")
    total = sum(per_request.values())
    cores = os.cpu_count() or 1
    return {
        "cpu_ms_per_request": per_request,
        "at_rate": passing[-1]["rate"],
        "broker_loop_rps": round(1000 / broker) if broker else None,
        "stack_rps": round(cores * 1000 / total) if total else None,
        "cores": cores,
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)
