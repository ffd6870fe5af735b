"""`python -m bench [--quick] [--only NAME[,NAME]] [--nodes N[,N]] [--out PATH]`: run the benchmarks.

Prints a table of figures against targets, each beside the same figure of a baseline run
(`--baseline`, by default the figures recorded before the fleet-scale work), and writes JSON.

Exits non-zero only when a benchmark crashed (a target missed is a finding, not an error), so
CI can run `--quick` to keep the benchmarks from rotting without judging a shared machine's
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    fanout,
    footprint,
    forwarding,
    http_client,
    staged_switch,
    switch_latency,
    throughput,
    zero_downtime,
)
from bench.harness import REPO_ROOT, machine_info
from bench.result import BenchContext, BenchResult

Runner = Callable[[BenchContext], Awaitable[BenchResult]]

DEFAULT_BASELINE = REPO_ROOT / "bench" / "baselines" / "before-fleet-scale.json"

# In this order: fan-out reuses the switches the switch-latency benchmark measured.
BENCHMARKS: dict[str, Runner] = {
    "switch_latency": switch_latency.run,
    "fanout": fanout.run,
    "zero_downtime": zero_downtime.run,
    "staged_switch": staged_switch.run,
    "forwarding": forwarding.run,
    "http_client": http_client.run,
    "throughput": throughput.run,
    "footprint": footprint.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (CI)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--nodes", default="", help="fleet sizes for switch_latency, e.g. 100,1000,5000 (the growth curve)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=DEFAULT_BASELINE,
        help="a results JSON whose figures are shown beside this run's (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default: bench/results/latest.json)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "var" / "bench", help="process logs")
    parser.add_argument(
        "--profile",
        default="",
        help="processes to profile (CPU time), e.g. broker,version-registry (stats in the work dir)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    args.names = names
    try:
        args.sizes = tuple(int(n) for n in args.nodes.split(",") if n.strip())
    except ValueError:
        parser.error(f"--nodes takes comma-separated node counts, got {args.nodes!r}")
    if any(n < 1 for n in args.sizes):
        parser.error("--nodes: every fleet size must be at least 1")
    if args.out is None:
        args.out = REPO_ROOT / "bench" / "results" / ("quick.json" if args.quick else "latest.json")
    return args


def _mark(met: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]NO[/]", None: "[dim]-[/]"}[met]


def load_baseline(path: Path | None) -> dict[tuple[str, str], float | None]:
    """(benchmark, measure) -> value from an earlier results JSON; empty when there is none."""
    if path is None or not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    found: dict[tuple[str, str], float | None] = {}
    for name, bench in doc.get("benchmarks", {}).items():
        for check in bench.get("checks", []):
            found[(name, check["measure"])] = check.get("value")
    return found


def print_table(
    console: Console,
    results: dict[str, BenchResult],
    errors: dict[str, str],
    baseline: dict[tuple[str, str], float | None],
) -> None:
    table = Table(title="mlnode-upgrade benchmarks", show_lines=False)
    for col in ("benchmark", "measure", "value", "baseline", "target", "met"):
        table.add_column(col, overflow="fold")
    for name, result in results.items():
        first = True
        for check in result.checks:
            value = "-" if check.value is None else f"{check.value:g} {check.unit}"
            before = baseline.get((name, check.measure))
            was = "" if before is None else f"{before:g} {check.unit}"
            table.add_row(name if first else "", check.measure, value, was, check.target, _mark(check.met))
            first = False
        for measure, value in result.rows:
            table.add_row(name if first else "", measure, value, "", "", "")
            first = False
        table.add_section()
    for name, error in errors.items():
        table.add_row(name, "[red]crashed[/]", error.strip().splitlines()[-1][:120], "", _mark(False))
    console.print(table)


async def run_all(
    args: argparse.Namespace, console: Console
) -> tuple[dict[str, BenchResult], dict[str, str]]:
    ctx = BenchContext(
        quick=args.quick,
        work_dir=args.work_dir.resolve(),
        say=lambda text: console.print(text, highlight=False),
        profile=tuple(p.strip() for p in args.profile.split(",") if p.strip()),
        nodes=args.sizes,
    )
    results: dict[str, BenchResult] = {}
    errors: dict[str, str] = {}
    for name in args.names:
        console.rule(f"[bold]{name}[/]")
        started = time.monotonic()
        try:
            result = await BENCHMARKS[name](ctx)
        except Exception:
            errors[name] = traceback.format_exc()
            console.print(f"[red]{name} crashed:[/]\n{errors[name]}")
            continue
        result.seconds = time.monotonic() - started
        results[name] = result
        console.print(f"{name}: done in {result.seconds:.0f} s")
    return results, errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.monotonic()
    machine = machine_info()
    machine["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    console.print(f"benchmarks: {', '.join(args.names)} ({'quick' if args.quick else 'full'})")
    results, errors = asyncio.run(run_all(args, console))
    wall = time.monotonic() - started
    doc: dict[str, Any] = {
        "machine": machine,
        "mode": "quick" if args.quick else "full",
        "wall_seconds": round(wall, 1),
        "benchmarks": {name: r.to_json() for name, r in results.items()},
        "errors": {name: e.strip().splitlines()[-1] for name, e in errors.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    baseline = load_baseline(args.baseline)
    doc["baseline"] = {"path": str(args.baseline), "found": bool(baseline)}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(console, results, errors, baseline)
    console.print(f"results written to {args.out} ({wall:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
