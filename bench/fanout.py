"""Fan-out: handing over N nodes at once against doing them one after the other.

The handover of a switch is timed from `version.changed` to the last node ready (see
`switch_latency`); the sequential time is N times the single-node handover, which is what a
broker that walks its nodes one by one would take. The ratio shows the nodes really are handed
over concurrently; the marginal cost per extra node is the part that does not overlap (the
broker's own work per node on its single event loop).

When `switch_latency` ran earlier in the same run its switches are reused (same stacks, same
model load), otherwise a few switches per size are measured here.
"""

from __future__ import annotations

import time
from typing import Any

from bench.result import BenchContext, BenchResult, Check
from bench.stats import percentile, ratio
from bench.switch_latency import FULL as SWITCH_FULL
from bench.switch_latency import QUICK as SWITCH_QUICK
from bench.switch_latency import READY_MARGIN_S, UpgradeRecord, measure_upgrades

__all__ = ["run"]

OWN_UPGRADES = {"full": 3, "quick": 1}


async def run(ctx: BenchContext) -> BenchResult:
    started = time.monotonic()
    plan = SWITCH_QUICK if ctx.quick else SWITCH_FULL
    cached = ctx.shared.get("switch_records")
    if cached is not None:
        load: float = cached["model_load_s"]
        records: dict[int, list[UpgradeRecord]] = cached["records"]
        source = "switch_latency switches of this run"
    else:
        load = plan.model_load_s
        upgrades = OWN_UPGRADES["quick" if ctx.quick else "full"]
        records = {n: (await measure_upgrades(ctx, n, upgrades, load)).records for n in plan.sizes}
        source = f"{upgrades} switches per size measured by fanout"

    sizes = sorted(records)
    handover = {n: percentile([r.handover_s for r in records[n]], 50) for n in sizes}
    first = handover[sizes[0]]
    single = None if first is None else first / sizes[0]
    by_size: dict[str, Any] = {}
    rows: list[tuple[str, str]] = []
    for n in sizes:
        concurrent = handover[n]
        sequential = None if single is None else single * n
        marginal = (
            None
            if concurrent is None or first is None or n == sizes[0]
            else (concurrent - first) / (n - sizes[0]) * 1000
        )
        broker_cpu = percentile([r.cpu_s.get("broker", 0.0) for r in records[n]], 50)
        by_size[str(n)] = {
            "handover_p50_s": _r(concurrent),
            "sequential_s": _r(sequential),
            "speedup": ratio(sequential, concurrent, 1),
            "marginal_ms_per_node": _r(marginal, 2),
            "broker_cpu_s_p50": broker_cpu,
            "switches": len(records[n]),
        }
        rows.append(
            (
                f"{n} nodes: concurrent vs sequential handover",
                f"{_r(concurrent)} s vs {_r(sequential)} s (x{by_size[str(n)]['speedup']}"
                + (f", +{marginal:.2f} ms per extra node" if marginal is not None else "")
                + f", broker CPU {broker_cpu} s)",
            )
        )
    biggest = sizes[-1]
    checks = [
        Check.at_most(
            f"handover of {biggest} nodes at once (p50)", _r(handover[biggest]), load + READY_MARGIN_S, "s"
        )
    ]
    figures = {"model_load_s": load, "source": source, "sizes": by_size}
    return BenchResult("fanout", figures, checks, rows, time.monotonic() - started)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
