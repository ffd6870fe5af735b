"""The node-exclusivity rule in one place: one operation per node, and a switch pre-empts upkeep."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.broker.scheduler import NodeScheduler


async def test_upkeep_is_skipped_on_a_busy_node_and_runs_on_an_idle_one() -> None:
    scheduler = NodeScheduler()
    release = asyncio.Event()
    entered = asyncio.Event()

    async def long_work() -> str:
        entered.set()
        await release.wait()
        return "first"

    async def other() -> str:
        return "second"

    first = asyncio.create_task(scheduler.upkeep_turn("a", long_work))
    await entered.wait()
    assert await scheduler.upkeep_turn("a", other) is None  # busy: skipped, not queued
    assert await scheduler.upkeep_turn("b", other) == "second"  # another node is independent
    release.set()
    assert await first == "first"
    assert await scheduler.upkeep_turn("a", other) == "second"


async def test_a_switch_cancels_upkeep_waits_for_its_turn_and_shuts_upkeep_out() -> None:
    scheduler = NodeScheduler()
    upkeep_entered = asyncio.Event()
    order: list[str] = []

    async def upkeep_work() -> None:
        async def hold() -> None:
            upkeep_entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                order.append("upkeep cancelled")

        await scheduler.upkeep_turn("a", hold)

    scheduler.spawn_upkeep("a", upkeep_work)
    await upkeep_entered.wait()

    async def handoff(node_id: str) -> None:
        async with scheduler.switch_turn(node_id):
            order.append(f"switch {node_id}")
            assert await scheduler.upkeep_turn(node_id, _never) is None

    tasks = scheduler.claim_for_switch(["a"], handoff)
    assert scheduler.claimed_by_switch("a")
    scheduler.spawn_upkeep("a", upkeep_work)  # refused while the switch owns the node
    await asyncio.gather(*tasks.values())
    assert order == ["upkeep cancelled", "switch a"]
    scheduler.release_switch()
    assert not scheduler.claimed_by_switch("a")


async def _never() -> None:
    raise AssertionError("upkeep ran on a node a switch owns")


async def test_an_api_node_call_waits_for_the_switch_on_its_node_then_runs_alone() -> None:
    scheduler = NodeScheduler()
    order: list[str] = []
    handoff_may_finish = asyncio.Event()
    stopped = asyncio.Event()

    async def handoff(node_id: str) -> None:
        async with scheduler.switch_turn(node_id):
            order.append("stop")
            stopped.set()
            await handoff_may_finish.wait()
            order.append("up")

    scheduler.claim_for_switch(["a"], handoff)
    await stopped.wait()  # the handoff is between its stop and its bring-up

    async def api_stop() -> None:
        async with scheduler.client_turn("a", timeout_s=5):
            order.append("api stop")

    call = asyncio.create_task(api_stop())
    await asyncio.sleep(0)  # one scheduling round: the call is now waiting for its turn
    assert order == ["stop"] and not call.done()  # not between the handoff's stop and its bring-up
    handoff_may_finish.set()
    await call
    assert order == ["stop", "up", "api stop"]


async def test_an_api_node_call_that_cannot_get_its_turn_times_out() -> None:
    scheduler = NodeScheduler()
    forever = asyncio.Event()

    async def handoff(node_id: str) -> None:
        async with scheduler.switch_turn(node_id):
            await forever.wait()

    tasks = scheduler.claim_for_switch(["a"], handoff)
    with pytest.raises(TimeoutError):
        async with scheduler.client_turn("a", timeout_s=0.05):
            pass
    tasks["a"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks["a"]
