"""Throughput: the registry catching up on queued block events, and the chain-watcher's publish rate.

Registry catch-up: with the registry synced, the process is paused (SIGSTOP), 10,000
`chain.block` events are published to the CHAIN stream, and the clock starts when it is resumed;
it stops when the registry's state says it has seen the last height. This is what a registry
restarted after an outage faces.

Chain-watcher publish rate: mock_chain produces blocks faster than the watcher can publish them
(in chunks, keeping a few hundred blocks ahead so the websocket never drops it as a slow
reader); the rate is blocks published per second until the cursor reaches the last height. Each
block costs the watcher two height-pinned gRPC queries, one JetStream publish and one KV write.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import OLD, BenchStack, StackConfig, wait_for
from bench.result import BenchContext, BenchResult, Check
from bench.stats import ratio
from shared.events import BlockCommitted, ChainVersionObserved
from shared.versions import MLNodeVersion

__all__ = ["Plan", "run"]

CATCH_UP_TARGET = 10_000.0  # events per second


@dataclass(frozen=True)
class Plan:
    events: int
    blocks: int
    chunk: int
    ahead: int


FULL = Plan(events=10_000, blocks=3000, chunk=200, ahead=600)
QUICK = Plan(events=1000, blocks=200, chunk=100, ahead=300)


async def registry_catch_up(ctx: BenchContext, events: int) -> dict[str, Any]:
    cfg = StackConfig(
        run_dir=ctx.work_dir / "throughput-registry",
        chain=False,
        mlnodes=False,
        broker="none",
        profile=ctx.profile,
    )
    async with BenchStack(cfg) as stack:
        nc = stack.events.nc
        assert nc is not None
        js = nc.jetstream()

        async def publish(event: BlockCommitted | ChainVersionObserved) -> None:
            await js.publish(event.SUBJECT, event.to_json(), headers={"Nats-Msg-Id": event.msg_id()})

        async def streams_exist() -> bool:
            try:
                await js.stream_info("CHAIN")
            except Exception:
                return False
            return True

        await wait_for(streams_exist, 30, "the CHAIN stream")
        await publish(ChainVersionObserved(current_version=MLNodeVersion(OLD), height=1))

        async def synced() -> bool:
            return (await stack.registry_state()).get("current_version") == OLD

        await wait_for(synced, 30, "the registry to sync")
        last = events + 1
        stack.procs.signal("version-registry", signal.SIGSTOP)
        try:
            t_pub = time.monotonic()
            for start in range(2, last + 1, 500):
                batch = range(start, min(start + 500, last + 1))
                await asyncio.gather(*(publish(BlockCommitted(height=h)) for h in batch))
            publish_s = time.monotonic() - t_pub
        finally:
            cpu_before = stack.cpu().get("version-registry", 0.0)
            started = time.time()
            stack.procs.signal("version-registry", signal.SIGCONT)

        async def caught_up() -> bool:
            try:
                return int((await stack.registry_state())["last_height"]) >= last
            except (httpx.HTTPError, KeyError, ValueError):
                return False

        done = await wait_for(caught_up, 600, f"the registry to reach height {last}", interval_s=0.02)
        cpu = stack.cpu().get("version-registry", 0.0) - cpu_before
    seconds = done - started
    return {
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1),
        "registry_cpu_ms_per_event": round(cpu * 1000 / events, 3),
        "bench_publish_events_per_s": round(events / publish_s, 1),
    }


async def watcher_publish_rate(ctx: BenchContext, plan: Plan) -> dict[str, Any]:
    cfg = StackConfig(
        run_dir=ctx.work_dir / "throughput-watcher",
        registry=False,
        mlnodes=False,
        broker="none",
        profile=ctx.profile,
    )
    async with BenchStack(cfg) as stack:

        async def cursor() -> int:
            state = await stack.call_json("GET", f"{stack.watcher_url}/state")
            return int(state.get("cursor") or 0)

        start_height = await stack.height()

        async def synced() -> bool:
            return await cursor() >= start_height

        await wait_for(synced, 30, "the chain-watcher to reach the chain's height")
        cpu_before = stack.cpu()
        started = time.time()
        produced = 0
        while produced < plan.blocks:
            if produced - (await cursor() - start_height) < plan.ahead:
                n = min(plan.chunk, plan.blocks - produced)
                await stack.advance(n)
                produced += n
            else:
                await asyncio.sleep(0.02)  # keeping a bounded lead over the watcher
        last = start_height + plan.blocks

        async def caught_up() -> bool:
            return await cursor() >= last

        done = await wait_for(caught_up, 600, f"the chain-watcher to publish up to {last}", interval_s=0.02)
        cpu_after = stack.cpu()
        stack.check_alive()
    seconds = done - started
    per_block = {
        k: round((v - cpu_before.get(k, 0.0)) * 1000 / plan.blocks, 3)
        for k, v in cpu_after.items()
        if k in ("chain-watcher", "mock-chain", "nats")
    }
    return {
        "blocks": plan.blocks,
        "seconds": round(seconds, 3),
        "blocks_per_s": round(plan.blocks / seconds, 1),
        "cpu_ms_per_block": per_block,
    }


async def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    started = time.monotonic()
    registry = await registry_catch_up(ctx, plan.events)
    ctx.say(f"  registry catch-up: {registry['events_per_s']} events/s")
    watcher = await watcher_publish_rate(ctx, plan)
    ctx.say(f"  chain-watcher: {watcher['blocks_per_s']} blocks/s")
    figures = {
        "registry_catch_up": registry,
        "chain_watcher_publish": watcher,
        "catch_up_vs_target": ratio(registry["events_per_s"], CATCH_UP_TARGET),
    }
    checks = [
        Check.at_least(
            f"registry catch-up of {plan.events} block events",
            registry["events_per_s"],
            CATCH_UP_TARGET,
            "events/s",
        )
    ]
    rows = [
        ("registry CPU per event", f"{registry['registry_cpu_ms_per_event']} ms"),
        ("chain-watcher publish rate", f"{watcher['blocks_per_s']} blocks/s ({plan.blocks} blocks)"),
        ("chain-watcher CPU per block", f"{watcher['cpu_ms_per_block'].get('chain-watcher')} ms"),
    ]
    return BenchResult("throughput", figures, checks, rows, time.monotonic() - started)
