"""Zero downtime: a constant request rate through the broker across an upgrade, ours against the original.

The rates are those of the issue (100 and 500 requests per second) and one between them, to
show where the machine runs out of headroom. For each rate, two fresh stacks run the same
scenario one after the other: nodes serving the old version, the plan one block away, an
open-loop load through the broker, the upgrade block committed a few seconds in, the load kept
on while the new model loads (2 s) and after. One stack runs our broker, the other the baseline
that behaves like the original implementation (`bench/baselines/original_broker.py`: periodic
refresh tick, fire-and-forget stop, routing to the new version before its model is loaded).
Requests are sorted into before / during / after by when they were sent relative to the block's
own time, and into one-second buckets (`timeline`) to show whether latency recovers.

Our stack has one node more, which the API node put into PoC generate through the broker's node
endpoint before the switch, with PoC calls going to it through the endpoint during the whole run
(`bench.poc_endpoint`); the other nodes serve the load, as many as the baseline's. A failed PoC
call or a phase the new version did not take over fails the run like a failed request does. The
broker's CPU per request includes its share of the PoC calls (a few per second).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import NEW, OLD, BenchStack, LogTail, StackConfig
from bench.loadgen import RawClient, Sample, open_loop, sequential
from bench.poc_endpoint import PocCall, PocDriver, PocPlan, handoff_window, poc_figures, poc_schedule
from bench.result import BenchContext, BenchResult, Check
from bench.stats import percentile, ratio, summarize_ms

__all__ = ["Plan", "phases", "run", "timeline"]

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Plan:
    rates: tuple[int, ...]
    nodes: int
    model_load_s: float
    completion_delay_s: float
    before_s: float
    during_s: float
    after_s: float
    baseline_tick_s: float  # both of the baseline's periods (the original's are 30 s and 60 s)
    poc: PocPlan  # the PoC calls to our stack's extra node


FULL = Plan((100, 250, 500), 4, 2.0, 0.01, 3.0, 8.0, 3.0, 2.0, PocPlan(10.0, 100.0, 0.5))
QUICK = Plan((50,), 2, 0.5, 0.01, 1.0, 4.0, 1.0, 1.0, PocPlan(5.0, 100.0, 0.5))


def phases(samples: list[Sample], block_at: float, during_s: float) -> dict[str, list[Sample]]:
    """Requests by when they were sent: before the block, within `during_s` after it, and later."""
    out: dict[str, list[Sample]] = {"before": [], "during": [], "after": []}
    for s in samples:
        if s.sent_wall < block_at:
            out["before"].append(s)
        elif s.sent_wall < block_at + during_s:
            out["during"].append(s)
        else:
            out["after"].append(s)
    return out


RECOVERY_TARGET_S = 2.0  # back to the steady p99 this long after the last node is ready
RECOVERY_WINDOW_S = 1.0
RECOVERY_FROM_RPS = 250  # the rates the recovery target is checked at
RECOVERY_STEP_S = 0.25


def recovery_s(samples: list[Sample], last_ready: float, steady_p99_ms: float | None) -> float | None:
    """Seconds from the last node ready until latency is back to steady, or None if it never is.

    Back to steady at t: the requests sent from t to the end of the run, all answered, have a
    p99 within twice the p99 before the switch. (Not "every later second": a blip of a few slow
    requests long after the switch, as steady runs have too, is not the switch's backlog.)
    0 when it already is at the last node ready.
    """
    if steady_p99_ms is None:
        return None
    limit_s = 2 * steady_p99_ms / 1000
    after = sorted((s for s in samples if s.sent_wall >= last_ready), key=lambda s: s.sent_wall)
    if not after:
        return None
    t, end = last_ready, after[-1].sent_wall - RECOVERY_WINDOW_S  # keep at least a window's worth
    while t <= end:
        rest = [s for s in after if s.sent_wall >= t]
        if all(s.ok for s in rest) and (percentile([s.latency_s for s in rest], 99) or 0.0) <= limit_s:
            return round(t - last_ready, 3)
        t += RECOVERY_STEP_S
    return None


def timeline(samples: list[Sample], block_at: float, bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per `bucket_s` of send time (seconds from the block): requests, failures, p50 and max latency.

    Shows whether latency recovers after the switch or keeps growing (a backlog the machine
    cannot drain), which the three phase summaries alone hide.
    """
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int((s.sent_wall - block_at) // bucket_s), []).append(s)
    out = []
    for key in sorted(buckets):
        group = buckets[key]
        ok = [s.latency_s for s in group if s.ok]
        summary = summarize_ms(ok)
        out.append(
            {
                "t_s": round(key * bucket_s, 3),
                "requests": len(group),
                "failed": len(group) - len(ok),
                "p50_ms": summary["p50_ms"],
                "max_ms": summary["max_ms"],
            }
        )
    return out


def _phase_figures(samples: list[Sample]) -> dict[str, Any]:
    ok = [s.latency_s for s in samples if s.ok]
    return {"requests": len(samples), "failed": sum(not s.ok for s in samples), **summarize_ms(ok)}


async def run_variant(ctx: BenchContext, kind: str, rate: int, plan: Plan) -> dict[str, Any]:
    # Ours: one node more, in PoC through the node endpoint (the baseline has no node endpoint).
    poc_node = f"node-{plan.nodes}" if kind == "ours" else None
    cfg = StackConfig(
        run_dir=ctx.work_dir / f"zero-downtime-{kind}-{rate}",
        nodes=plan.nodes + (0 if poc_node is None else 1),
        model_load_s=plan.model_load_s,
        completion_delay_s=plan.completion_delay_s,
        broker="ours" if kind == "ours" else "baseline",
        baseline_refresh_s=plan.baseline_tick_s,
        baseline_status_s=plan.baseline_tick_s,
        profile=ctx.profile,
    )
    in_pow = frozenset(() if poc_node is None else (poc_node,))
    poc_calls: list[PocCall] = []
    poc_after: dict[str, Any] | None = None
    window: tuple[float, float] | None = None
    async with BenchStack(cfg) as stack:
        await stack.settle(OLD)
        poc = None if poc_node is None else PocDriver("127.0.0.1", stack.broker_port, poc_node)
        if poc is not None:
            await poc.enter_generate(OLD)
        height = await stack.schedule(NEW)
        broker_log = LogTail(stack.procs.log_path("broker"))
        broker_log.new_lines()  # only lines from the switch on
        client = RawClient("127.0.0.1", stack.broker_port)
        await sequential(client, PATH, 20)  # warm the connections and the broker's code paths
        block: dict[str, float] = {}

        async def commit() -> None:
            await stack.advance(1)
            block["at"] = await stack.block_time(height)

        async def poc_load() -> list[PocCall]:
            return [] if poc is None else await poc.load(poc_schedule(plan.poc, duration, plan.before_s))

        duration = plan.before_s + plan.during_s + plan.after_s
        cpu_before = stack.cpu()
        samples, poc_calls = await asyncio.gather(
            open_loop(client, PATH, rate, duration, at_offsets={plan.before_s: commit}), poc_load()
        )
        cpu_after = stack.cpu()
        client.close()
        stack.check_alive()
        await stack.settle(NEW, timeout_s=60, in_pow=in_pow)
        ready_at = await stack.nodes_ready_at(NEW, block["at"]) if kind == "ours" else {}
        instances = (await stack.call_json("GET", f"{stack.mock_url(OLD)}/mock/instances"))["instances"]
        old_states = {i["node"]: i["state"] for i in instances}
        if poc is not None:
            poc_after = await poc.after_switch(stack, NEW)
            window = handoff_window(broker_log.new_lines(), f"{height}-{NEW}", poc.node_id)
            poc.close()
    block_at = block["at"]
    by_phase = phases(samples, block_at, plan.during_s)
    figures = {name: _phase_figures(group) for name, group in by_phase.items()}
    before_p50, after_p50 = figures["before"]["p50_ms"], figures["after"]["p50_ms"]
    failed = [s for s in samples if not s.ok]
    new_ok = [s.sent_wall + s.latency_s - block_at for s in samples if s.ok and s.version == NEW]
    errors: dict[str, int] = {}
    for s in failed:
        key = f"{s.status} {s.error[:60]}"
        errors[key] = errors.get(key, 0) + 1
    poc_result = None if poc_after is None else {**poc_after, **poc_figures(poc_calls, block_at, window, NEW)}
    last_ready = max(ready_at.values()) if ready_at else None
    return {
        "requests": len(samples),
        "failed": len(failed),
        "offered_rps": rate,
        "serving_nodes": plan.nodes,
        "served_by_version": {v: sum(1 for s in samples if s.ok and s.version == v) for v in (OLD, NEW)},
        "phases": figures,
        # Back to normal after the switch: the median within twice what it was before.
        "latency_recovered": (
            before_p50 is not None and after_p50 is not None and after_p50 <= 2 * before_p50
        ),
        "last_node_ready_after_block_s": None if last_ready is None else round(last_ready - block_at, 3),
        "recovered_after_last_ready_s": (
            None if last_ready is None else recovery_s(samples, last_ready, figures["before"]["p99_ms"])
        ),
        "failure_window_s": (
            round(max(s.sent_wall for s in failed) - min(s.sent_wall for s in failed), 3) if failed else 0.0
        ),
        "first_new_version_answer_after_block_s": round(min(new_ok), 3) if new_ok else None,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "old_version_stopped_on_every_node": set(old_states.values()) == {"STOPPED"},
        "cpu_ms_per_request": {
            k: round((v - cpu_before.get(k, 0.0)) * 1000 / max(len(samples), 1), 3)
            for k, v in cpu_after.items()
            if k in ("broker", "baseline-broker", f"mlnode-{OLD}", f"mlnode-{NEW}", "nginx")
        },
        "timeline": timeline(samples, block_at),
        "poc": poc_result,  # None for the baseline
    }


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    by_rate: dict[str, Any] = {}
    checks: list[Check] = []
    rows: list[tuple[str, str]] = []
    for rate in plan.rates:
        ours = await run_variant(ctx, "ours", rate, plan)
        poc = ours["poc"]
        ctx.say(
            f"  {rate} rps, ours: {ours['failed']} failed of {ours['requests']}; PoC calls "
            f"{poc['failed']} failed of {poc['calls']}, phase kept: {poc['phase_kept']}"
        )
        base = await run_variant(ctx, "baseline", rate, plan)
        ctx.say(f"  {rate} rps, baseline: {base['failed']} failed of {base['requests']}")
        by_rate[str(rate)] = {
            "ours": ours,
            "baseline": base,
            "failed_ratio_baseline_to_ours": ratio(base["failed"], ours["failed"]),
            "p99_during_ratio_ours_to_baseline": ratio(
                ours["phases"]["during"]["p99_ms"], base["phases"]["during"]["p99_ms"]
            ),
        }
        checks.append(Check.at_most(f"failed requests at {rate} rps (ours)", ours["failed"], 0, "requests"))
        if rate >= RECOVERY_FROM_RPS:
            checks.append(
                Check.at_most(
                    f"back to steady p99 after the last node ready at {rate} rps (ours)",
                    ours["recovered_after_last_ready_s"],
                    RECOVERY_TARGET_S,
                    "s",
                )
            )
        checks += _poc_checks(rate, poc)
        for name, v in (("ours", ours), ("baseline", base)):
            p = v["phases"]
            rows.append(
                (
                    f"{rate} rps {name}: failed; p50|p99 before / during / after",
                    f"{v['failed']}/{v['requests']}; "
                    + " / ".join(
                        f"{p[k]['p50_ms']}|{p[k]['p99_ms']} ms" for k in ("before", "during", "after")
                    )
                    + ("" if v["latency_recovered"] else " (latency did not recover)"),
                )
            )
        rows += _poc_rows(rate, poc)
        ours_share = ours["failed"] / max(ours["requests"], 1)
        base_share = base["failed"] / max(base["requests"], 1)
        times = by_rate[str(rate)]["failed_ratio_baseline_to_ours"]
        rows.append(
            (
                f"{rate} rps: failed share ours vs baseline",
                f"{ours_share:.2%} vs {base_share:.2%}"
                + (f" (baseline fails {times}x as often)" if times is not None else " (ours: none failed)"),
            )
        )
    top = str(max(plan.rates))
    figures = {
        "plan": {
            "nodes": plan.nodes,
            "model_load_s": plan.model_load_s,
            "completion_delay_s": plan.completion_delay_s,
            "before_s": plan.before_s,
            "during_s": plan.during_s,
            "after_s": plan.after_s,
            "baseline_refresh_tick_s": plan.baseline_tick_s,
            "baseline_status_tick_s": plan.baseline_tick_s,
            "original_periods_s": {"refresh": 30, "status": 60},
            "poc_calls": asdict(plan.poc),
            "poc_nodes_ours": 1,
        },
        "rates": by_rate,
        "p99_during_ms_at_top_rate": {
            "ours": by_rate[top]["ours"]["phases"]["during"]["p99_ms"],
            "baseline": by_rate[top]["baseline"]["phases"]["during"]["p99_ms"],
        },
        "max_latency_during_s_ours": _max_during(by_rate),
        "poc_ours": {
            rate: {k: v["ours"]["poc"][k] for k in ("calls", "failed", "answered_by_version", "phase_kept")}
            for rate, v in by_rate.items()
        },
    }
    return BenchResult("zero_downtime", figures, checks, rows, time.monotonic() - started)


def _max_during(by_rate: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for rate, v in by_rate.items():
        ms = v["ours"]["phases"]["during"]["max_ms"]
        out[rate] = None if ms is None else round(ms / 1000, 3)
    return out


def _poc_checks(rate: int, poc: dict[str, Any]) -> list[Check]:
    """A failed PoC call, or a phase the new version did not take over, fails the run."""
    kept = 1 if poc["phase_kept"] else 0
    return [
        Check.at_most(
            f"failed PoC calls via the node endpoint at {rate} rps (ours)", poc["failed"], 0, "calls"
        ),
        Check.at_least(
            f"PoC node GENERATING on {NEW} after the switch at {rate} rps (ours)", kept, 1, "nodes"
        ),
    ]


def _poc_rows(rate: int, poc: dict[str, Any]) -> list[tuple[str, str]]:
    during = poc["during_handoff"]
    by_version = ", ".join(f"{v} {n}" for v, n in poc["answered_by_version"].items())
    final = poc["final_status"]
    return [
        (
            f"{rate} rps ours: PoC calls failed/sent; by answering version",
            f"{poc['failed']}/{poc['calls']}; {by_version}",
        ),
        (
            f"{rate} rps ours: PoC calls sent during {poc['node']}'s handoff; wait p50|max",
            f"{during['calls']} ({during['failed']} failed); {during['p50_ms']}|{during['max_ms']} ms",
        ),
        (
            f"{rate} rps ours: {poc['node']} after the switch",
            f"{final['status'] or final['http']} on {final['version'] or '-'}"
            + ("; init body carried" if poc["init_body_carried"] else "; init body NOT carried"),
        ),
    ]
