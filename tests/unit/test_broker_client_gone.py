"""A request waiting for a node gives its place up when its client goes: the pool, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from services.broker.client_gone import ClientGone, acquire_while_connected
from services.broker.pool import Lease, NodePool, NoNodeReady
from tests.unit.broker_fakes import V8, node, until

DEADLINE_S = 2.0


def one_node_pool() -> NodePool:
    """One node "a" serving V8, ready, room for a single request."""
    pool = NodePool()
    pool.upsert(node("a", max_concurrent=1))
    pool.adopt_current(V8)
    pool.mark("a", ready=True, phase="ready", version=V8)
    return pool


def full_pool() -> tuple[NodePool, Lease]:
    pool = one_node_pool()
    first = pool.try_acquire()
    assert first is not None and pool.try_acquire() is None
    return pool, first


def in_flight(pool: NodePool) -> int:
    return pool.slots["a"].in_flight[V8]


def never_called() -> Awaitable[None]:
    pytest.fail("a free node must be leased without watching the client")


async def waiting_for_a_node(pool: NodePool, gone: asyncio.Event) -> asyncio.Task[Lease]:
    """A request queued in the pool (its waiter registered), racing `gone`."""

    async def disconnect() -> None:
        await gone.wait()

    task = asyncio.create_task(acquire_while_connected(pool, 5.0, disconnect))
    await until(lambda: bool(pool._waiters), DEADLINE_S)
    assert not task.done()
    return task


async def settle() -> None:
    """Let every task this test left behind (the inner acquire and watch) finish."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        _, pending = await asyncio.wait(others, timeout=DEADLINE_S)
        assert not pending


async def test_a_free_node_is_leased_without_watching_the_client() -> None:
    pool = one_node_pool()
    lease = await acquire_while_connected(pool, 5.0, never_called)
    assert lease.node.id == "a" and lease.version == V8
    assert in_flight(pool) == 1


async def test_a_client_gone_first_gives_up_its_place() -> None:
    pool, first = full_pool()
    gone = asyncio.Event()
    task = await waiting_for_a_node(pool, gone)
    gone.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(task, DEADLINE_S)
    await settle()
    assert in_flight(pool) == 1  # only the first lease
    # The capacity the first request gives back is not handed to the departed one.
    pool.release(first)
    assert in_flight(pool) == 0
    again = pool.try_acquire()
    assert again is not None and again.node.id == "a"
    assert not pool._waiters


async def test_capacity_released_before_the_client_goes_is_leased() -> None:
    pool, first = full_pool()
    gone = asyncio.Event()
    task = await waiting_for_a_node(pool, gone)
    pool.release(first)
    lease = await asyncio.wait_for(task, DEADLINE_S)
    assert lease.node.id == "a" and lease.version == V8
    assert in_flight(pool) == 1
    gone.set()  # too late to matter: the watch was dropped with the lease
    await settle()
    assert in_flight(pool) == 1


async def test_without_a_watch_it_is_the_pools_bounded_wait() -> None:
    pool, first = full_pool()
    with pytest.raises(NoNodeReady, match="at max_concurrent: a"):
        await acquire_while_connected(pool, 0.05, None)
    pool.release(first)
    lease = await acquire_while_connected(pool, 0.05, None)
    assert lease.node.id == "a"


async def test_release_and_disconnect_in_the_same_tick_lose_no_capacity() -> None:
    pool, first = full_pool()
    gone = asyncio.Event()
    task = await waiting_for_a_node(pool, gone)
    gone.set()
    pool.release(first)
    try:
        lease: Lease | None = await asyncio.wait_for(task, DEADLINE_S)
    except ClientGone:
        lease = None
    await settle()
    assert in_flight(pool) == (0 if lease is None else 1)


async def test_a_request_cancelled_as_a_lease_is_granted_gives_it_back() -> None:
    pool, first = full_pool()
    gone = asyncio.Event()
    task = await waiting_for_a_node(pool, gone)
    pool.release(first)  # grants the waiter's future ...
    task.cancel()  # ... and the request is cancelled before its inner acquire resumes
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE_S)
    await settle()
    assert in_flight(pool) == 0
    assert pool.try_acquire() is not None


async def test_a_request_cancelled_while_waiting_leaves_the_capacity_free() -> None:
    pool, first = full_pool()
    gone = asyncio.Event()
    task = await waiting_for_a_node(pool, gone)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE_S)
    await settle()
    pool.release(first)
    assert in_flight(pool) == 0
    assert pool.try_acquire() is not None
