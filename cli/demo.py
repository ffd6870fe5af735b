"""`mlnode-upgrade demo`: a whole upgrade on the local stack, under load, checked end to end.

Starts the stack, waits until every node serves the old version, puts the last node into a
proof-of-compute phase through the broker's node endpoint (as the API node does every epoch),
sends steady inference load through the broker and PoC calls to that node, proposes the new
version a few blocks ahead, shows the switch live, and then checks what an operator cares about:
the switch happened at the plan's height, every node serves the new version (the PoC node is in
the same PoC phase on it), the old version is stopped on every node, and no request failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cli.demo_poc import PocRound
from cli.propose import build_proposal
from cli.stack import LocalStack, StackConfig, StackInfo
from shared.chain_status import parse_status_reply
from shared.timestamps import rfc3339

__all__ = ["DemoSummary", "run_demo"]

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@dataclass
class LoadStats:
    sent: int = 0
    ok_by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    recent: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    in_flight: int = 0

    def rate_by_version(self, window_s: float = 2.0) -> dict[str, float]:
        cutoff = time.monotonic() - window_s
        counts = Counter(v for t, v in self.recent if t >= cutoff)
        return {v: n / window_s for v, n in counts.items()}


@dataclass
class DemoSummary:
    ok: bool
    old_version: str
    new_version: str
    plan_height: int
    switch_height: int | None
    switched_at_plan_height: bool
    block_to_all_ready_s: float | None
    requests_sent: int
    requests_by_version: dict[str, int]
    failed_requests: int
    failures: list[str]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    old_version_stopped: dict[str, bool]
    old_version_stop_calls: dict[str, int]
    new_version_serving: dict[str, bool]
    problems: list[str]
    run_dir: str
    poc_node: str | None = None
    poc_calls_sent: int = 0
    poc_calls_by_version: dict[str, int] = field(default_factory=dict)
    poc_failed_calls: int = 0
    poc_phase_carried: bool | None = None


async def _send_one(client: httpx.AsyncClient, broker: str, stream: bool, stats: LoadStats) -> None:
    stats.sent += 1
    stats.in_flight += 1
    started = time.monotonic()
    try:
        if stream:
            async with client.stream(
                "POST", f"{broker}/v1/chat/completions", json={**CHAT, "stream": True}
            ) as r:
                lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                if r.status_code != 200 or not lines or lines[-1] != "data: [DONE]":
                    raise RuntimeError(f"stream answered {r.status_code} with {len(lines)} events")
                version = r.headers.get("x-mlnode-version", "?")
        else:
            r = await client.post(f"{broker}/v1/chat/completions", json=CHAT)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            version = r.headers.get("x-mlnode-version", "?")
        stats.ok_by_version[version] += 1
        stats.recent.append((time.monotonic(), version))
        stats.latencies_ms.append((time.monotonic() - started) * 1000)
    except Exception as exc:  # every failure is a finding, whatever its kind
        stats.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        stats.in_flight -= 1


async def _load(broker: str, rps: float, stop: asyncio.Event, stats: LoadStats) -> None:
    """Open-loop load: requests start on schedule whether or not earlier ones finished."""
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(120.0), limits=httpx.Limits(max_connections=200)
    ) as client:
        interval = 1.0 / rps
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            task = asyncio.create_task(_send_one(client, broker, n % 5 == 0, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing the load
        if tasks:
            await asyncio.wait(tasks)


async def _json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        r = await client.get(url, timeout=3.0)
        return r.json()
    except (httpx.HTTPError, ValueError):
        return None


async def _height(client: httpx.AsyncClient, info: StackInfo) -> int:
    status = await _json(client, f"{info.chain_rpc_url}/status")
    try:
        return parse_status_reply(status).height
    except (TypeError, KeyError, ValueError):
        return 0


def _all_serving(status: Any, version: str, nodes: int) -> bool:
    """Every node is on `version` and serves it, or runs the PoC phase it was given ('pow')."""
    if not status:
        return False
    serving = [
        n
        for n in status.get("nodes", [])
        if n.get("version") == version and (n.get("ready") or n.get("phase") == "pow")
    ]
    return len(serving) == nodes


def _view(info: StackInfo, height: int, target: int, registry: Any, broker: Any, stats: LoadStats) -> Group:
    head = Table.grid(padding=(0, 2))
    left = max(0, target - height)
    head.add_row("block", f"{height}", "upgrade at", f"{target}", "blocks left", f"{left}")
    if registry:
        head.add_row(
            "current",
            str(registry.get("current_version")),
            "last used",
            str(registry.get("last_used_version")),
        )
    nodes = Table(title="nodes", show_lines=False)
    for col in ("node", "version", "ready", "phase", "in flight"):
        nodes.add_column(col)
    for n in (broker or {}).get("nodes", []):
        nodes.add_row(n["id"], str(n.get("version")), "yes" if n.get("ready") else "no", str(n.get("phase")),
                      str(n.get("in_flight")))  # fmt: skip
    load = Table(title="load through the broker")
    for col in ("version", "req/s", "served"):
        load.add_column(col)
    rates = stats.rate_by_version()
    for version in sorted(set(stats.ok_by_version) | set(rates)):
        load.add_row(version, f"{rates.get(version, 0.0):.1f}", str(stats.ok_by_version[version]))
    load.add_row("failed", "", str(len(stats.failures)), style="red" if stats.failures else "green")
    return Group(head, nodes, load)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _block_time(client: httpx.AsyncClient, info: StackInfo, height: int) -> float | None:
    block = await _json(client, f"{info.chain_rpc_url}/block?height={height}")
    try:
        stamp = block["result"]["block"]["header"]["time"]
    except (TypeError, KeyError):
        return None
    return rfc3339(stamp).timestamp()


@contextlib.asynccontextmanager
async def _steady_load(broker: str, rps: float, stats: LoadStats) -> AsyncIterator[None]:
    """`rps` requests/s through the broker while the block runs; on leaving, in-flight ones finish."""
    stop = asyncio.Event()
    task = asyncio.create_task(_load(broker, rps, stop, stats))
    try:
        yield
    except BaseException:
        task.cancel()  # the demo failed: its load's answers no longer matter
        raise
    stop.set()
    await task


@dataclass
class _NodeOutcomes:
    """Per node, after the switch: is the old version stopped (and how often asked), the new serving."""

    stopped: dict[str, bool] = field(default_factory=dict)
    stop_calls: dict[str, int] = field(default_factory=dict)
    serving: dict[str, bool] = field(default_factory=dict)


@dataclass
class _DemoRun:
    """One drive of the demo: its steps, in order, share the stack, a client, the load and the problems."""

    info: StackInfo
    client: httpx.AsyncClient
    console: Console
    live: bool
    timeout_s: float
    stats: LoadStats = field(default_factory=LoadStats)
    problems: list[str] = field(default_factory=list)
    poc: PocRound | None = None
    poc_carried: bool | None = None

    @property
    def nodes(self) -> int:
        return len(self.info.proxies)

    async def wait_until_serving(self, version: str) -> None:
        """Step 1: every node serves `version` (the stack came up), or the demo cannot start."""
        deadline = time.monotonic() + self.timeout_s
        status_url = f"{self.info.broker_url}/upgrade/status"
        while not _all_serving(await _json(self.client, status_url), version, self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes did not come up on {version} within {self.timeout_s}s")
            await asyncio.sleep(0.2)  # polling the stack's state with a deadline

    async def start_poc(self) -> None:
        """Step 1b: with two nodes or more, the last one starts a PoC phase through the node endpoint."""
        if self.nodes < 2:
            return
        node = list(self.info.mlnodes)[-1]
        self.poc = PocRound(self.info.broker_url, node, self.info.old_version)
        await self.poc.start(self.client, await _height(self.client, self.info))
        self.console.print(f"{node} is in a PoC generate phase, driven through {self.poc.base}")

    async def propose(self, lead_blocks: int) -> int:
        """Step 2: propose the new version `lead_blocks` after the voting period; the plan's height."""
        info = self.info
        new = info.new_version
        target = await _height(self.client, info) + info.voting_period_blocks + lead_blocks
        proposal = build_proposal(
            height=target,
            node_version=new,
            title=f"MLNode upgrade to {new} at height {target}",
            summary="demo",
            deposit="10000000ngonka",
        )
        r = await self.client.post(f"{info.chain_rpc_url}/gov/proposals", json=proposal)
        if r.status_code != 200:
            raise RuntimeError(f"mock_chain refused the proposal: {r.text}")
        self.console.print(
            f"proposed {new} at height {target} (voting period {info.voting_period_blocks} blocks)"
        )
        return target

    async def watch_switch(self, target: int) -> float | None:
        """Step 3: show the switch until every node serves the new version and the registry recorded
        it; the wall-clock time every node was ready (None if it never was)."""
        info, client, new = self.info, self.client, self.info.new_version
        ready_at: float | None = None
        blocks_left = target - await _height(client, info)
        deadline = time.monotonic() + self.timeout_s + blocks_left * info.block_time_s * 2
        with Live(
            console=self.console, refresh_per_second=4, transient=False, auto_refresh=self.live
        ) as view:
            while True:
                height = await _height(client, info)
                registry = await _json(client, f"{info.registry_url}/state")
                broker = await _json(client, f"{info.broker_url}/upgrade/status")
                if self.live:
                    view.update(_view(info, height, target, registry, broker, self.stats))
                if ready_at is None and _all_serving(broker, new, self.nodes):
                    ready_at = time.time()
                if ready_at is not None and registry and registry.get("last_used_version") == new:
                    break
                if time.monotonic() > deadline:
                    self.problems.append(
                        f"not every node served {new} within {self.timeout_s}s of the proposal"
                    )
                    break
                await asyncio.sleep(0.1)  # display refresh and state polling
            if not self.live:
                view.update(_view(info, await _height(client, info), target, registry, broker, self.stats))
        return ready_at

    async def switch_height(self, target: int) -> int | None:
        """Step 4a: the height the registry recorded for the switch to the new version."""
        history = await _json(self.client, f"{self.info.registry_url}/history")
        new = self.info.new_version
        switches = [t for t in (history or {}).get("transitions", []) if t.get("current") == new]
        height: int | None = switches[-1]["height"] if switches else None
        if height != target:
            self.problems.append(f"the switch happened at height {height}, the plan said {target}")
        return height

    async def node_outcomes(self) -> _NodeOutcomes:
        """Step 4b: on every node, the old version STOPPED (and the stops it got), the new serving."""
        old, new = self.info.old_version, self.info.new_version
        out = _NodeOutcomes()
        for node, urls in self.info.mlnodes.items():
            old_state = await _json(self.client, f"{urls[old]}/api/v1/state")
            new_state = await _json(self.client, f"{urls[new]}/api/v1/state")
            stops = await _json(self.client, f"{urls[old]}/mock/requests?route=/api/v1/stop&method=POST")
            out.stopped[node] = (old_state or {}).get("state") == "STOPPED"
            out.stop_calls[node] = len((stops or {}).get("requests", []))
            if not out.stopped[node]:
                self.problems.append(f"{node}: {old} is {old_state}, not STOPPED")
            if self.poc is not None and node == self.poc.node:
                wrong = await self.poc.carried(self.client, urls[new])
                self.poc_carried = out.serving[node] = wrong is None
                if wrong:
                    self.problems.append(wrong)
                continue
            out.serving[node] = (new_state or {}).get("state") == "INFERENCE"
            if not out.serving[node]:
                self.problems.append(f"{node}: {new} is {new_state}, not serving")
        return out

    def load_problems(self) -> None:
        """Step 4c: no request failed, and the new version served some."""
        if self.stats.failures:
            self.problems.append(f"{len(self.stats.failures)} requests failed")
        if not self.stats.ok_by_version.get(self.info.new_version):
            self.problems.append(f"no request was served by {self.info.new_version}")
        if self.poc is not None:
            if self.poc.failures:
                self.problems.append(f"{len(self.poc.failures)} PoC calls failed: {self.poc.failures[:3]}")
            if not self.poc.by_version.get(self.info.new_version):
                self.problems.append(f"no PoC call was answered by {self.info.new_version}")

    def summary(
        self, target: int, switch_height: int | None, block_to_ready: float | None, nodes: _NodeOutcomes
    ) -> DemoSummary:
        stats = self.stats
        return DemoSummary(
            ok=not self.problems,
            old_version=self.info.old_version,
            new_version=self.info.new_version,
            plan_height=target,
            switch_height=switch_height,
            switched_at_plan_height=switch_height == target,
            block_to_all_ready_s=block_to_ready,
            requests_sent=stats.sent,
            requests_by_version=dict(stats.ok_by_version),
            failed_requests=len(stats.failures),
            failures=stats.failures[:20],
            latency_p50_ms=_percentile(stats.latencies_ms, 0.50),
            latency_p99_ms=_percentile(stats.latencies_ms, 0.99),
            old_version_stopped=nodes.stopped,
            old_version_stop_calls=nodes.stop_calls,
            new_version_serving=nodes.serving,
            problems=self.problems,
            run_dir=self.info.run_dir,
            poc_node=self.poc.node if self.poc else None,
            poc_calls_sent=self.poc.sent if self.poc else 0,
            poc_calls_by_version=dict(self.poc.by_version) if self.poc else {},
            poc_failed_calls=len(self.poc.failures) if self.poc else 0,
            poc_phase_carried=self.poc_carried,
        )


async def drive(
    info: StackInfo, *, rps: float, lead_blocks: int, console: Console, live: bool, timeout_s: float = 120.0
) -> DemoSummary:
    """The demo's steps: old version up, load on, propose, watch the switch, load off, check."""
    async with httpx.AsyncClient() as client:
        run = _DemoRun(info, client, console, live, timeout_s)
        await run.wait_until_serving(info.old_version)
        await run.start_poc()
        console.print(
            f"[green]every node serves {info.old_version}[/]; sending {rps:g} requests/s through the broker"
        )
        async with _steady_load(info.broker_url, rps, run.stats), _poc_calls(run):
            target = await run.propose(lead_blocks)
            ready_at = await run.watch_switch(target)
            await asyncio.sleep(2.0)  # keep the load on a little after the switch
        switch_height = await run.switch_height(target)
        block_at = await _block_time(client, info, target)
        block_to_ready = round(ready_at - block_at, 3) if ready_at and block_at else None
        nodes = await run.node_outcomes()
        run.load_problems()
    return run.summary(target, switch_height, block_to_ready, nodes)


@contextlib.asynccontextmanager
async def _poc_calls(run: _DemoRun) -> AsyncIterator[None]:
    if run.poc is None:
        yield
        return
    async with run.poc.calls(run.client):
        yield


def print_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="upgrade summary", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("versions", f"{summary.old_version} -> {summary.new_version}")
    table.add_row("plan height / switch height", f"{summary.plan_height} / {summary.switch_height}")
    table.add_row("block to every node ready", f"{summary.block_to_all_ready_s} s")
    served = ", ".join(f"{v}: {n}" for v, n in sorted(summary.requests_by_version.items()))
    table.add_row("requests served", served)
    table.add_row("failed requests", str(summary.failed_requests))
    table.add_row("latency p50 / p99", f"{summary.latency_p50_ms} / {summary.latency_p99_ms} ms")
    for node, stopped in summary.old_version_stopped.items():
        calls = summary.old_version_stop_calls[node]
        table.add_row(
            f"{node}: {summary.old_version}", f"{'STOPPED' if stopped else 'NOT STOPPED'} ({calls} stop)"
        )
    if summary.poc_node is not None:
        answered = ", ".join(f"{v}: {n}" for v, n in sorted(summary.poc_calls_by_version.items()))
        carried = "carried" if summary.poc_phase_carried else "NOT carried"
        table.add_row(
            f"{summary.poc_node}: PoC",
            f"generate phase {carried} to {summary.new_version}; {summary.poc_calls_sent} calls "
            f"({answered}), {summary.poc_failed_calls} failed",
        )
    console.print(table)
    for problem in summary.problems:
        console.print(f"[red]problem:[/] {problem}")
    console.print("[green]upgrade OK[/]" if summary.ok else "[red]upgrade FAILED[/]")


# What a demo run leaves in its directory; anything else there means it is not a demo's.
DEMO_ENTRIES = frozenset(
    {"gpu", "logs", "nats", "nginx", "nodes.json", "secrets", "summary.json", "stack.json"}
)


class RunDirInUse(RuntimeError):
    """The run directory holds files a demo did not write: refused rather than wiped."""


def fresh_run_dir(run_dir: Path) -> None:
    """Every demo starts from nothing: the last run's NATS state would seed the broker with the
    previous run's node addresses (nodes are seeded from the file only once), and its nodes would
    never come up. Only a directory that holds nothing but a demo's own files is wiped."""
    if not run_dir.exists():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in DEMO_ENTRIES)
    if foreign:
        raise RunDirInUse(
            f"{run_dir} holds files a demo did not write ({', '.join(foreign[:5])}); "
            "pass --run-dir with an empty or a demo's directory"
        )
    shutil.rmtree(run_dir)


def run_demo(config: StackConfig, *, out: Path, rps: float, lead_blocks: int, live: bool) -> int:
    console = Console()
    fresh_run_dir(Path(config.run_dir))
    deaths: list[str] = []
    stack = LocalStack(config, on_exit=lambda e: deaths.append(f"{e.name} exited with {e.returncode}"))
    console.print(f"starting the local stack in {config.run_dir} ...")
    with stack:
        assert stack.info is not None
        summary = asyncio.run(drive(stack.info, rps=rps, lead_blocks=lead_blocks, console=console, live=live))
        stack.check()
    if deaths:
        summary.problems += deaths
        summary.ok = False
    print_summary(summary, console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    console.print(f"summary written to {out}")
    return 0 if summary.ok else 1
