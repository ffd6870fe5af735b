"""Choosing a node, and the wait for one: pure choice plus the in-memory pool."""

from __future__ import annotations

import asyncio

import pytest

from services.broker.pool import NodePool, NoNodeReady
from services.broker.routing import NodeLoad, pick, why_none
from shared.versions import MLNodeVersion
from tests.unit.broker_fakes import V6, V8, node


def load(
    node_id: str,
    in_flight: int = 0,
    *,
    ready: bool = True,
    version: MLNodeVersion = V8,
    max_concurrent: int = 4,
    phase: str = "",
) -> NodeLoad:
    return NodeLoad(node_id, version, ready, in_flight, max_concurrent, phase)


def test_least_busy_ready_node_on_the_current_version_wins() -> None:
    nodes = [load("a", 3), load("b", 1), load("c", 0, ready=False), load("d", 0, version=V6)]
    assert pick(nodes, V8) == "b"


def test_busyness_is_relative_to_max_concurrent() -> None:
    assert pick([load("big", 10, max_concurrent=100), load("small", 1, max_concurrent=2)], V8) == "big"


def test_ties_go_to_the_lowest_id() -> None:
    assert pick([load("b", 1), load("a", 1)], V8) == "a"


def test_no_node_at_max_concurrent_takes_more() -> None:
    assert pick([load("a", 4), load("b", 4)], V8) is None


def test_unknown_version_routes_nowhere() -> None:
    assert pick([load("a")], None) is None


def test_why_none_names_the_reason() -> None:
    assert "not known yet" in why_none([], None)
    assert why_none([], V8) == "no MLNode is configured"
    text = why_none([load("a", 4), load("b", ready=False, phase="bring_up")], V8)
    assert text == "no MLNode is ready on v3.0.8; at max_concurrent: a; not ready: b (bring_up)"
    many = why_none([load(f"n{i}", ready=False) for i in range(15)], V8)
    assert "and 5 more" in many


async def test_a_request_waits_for_the_node_to_become_ready_then_gets_it() -> None:
    pool = NodePool()
    pool.upsert(node("a"))
    pool.set_current(V8)
    pool.mark("a", ready=False, phase="bring_up", version=V8)
    waiter = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    pool.mark("a", ready=True, phase="ready")
    lease = await asyncio.wait_for(waiter, 1.0)
    assert lease.node.id == "a" and lease.version == V8
    assert pool.slots["a"].in_flight[V8] == 1
    pool.release(lease)
    assert pool.slots["a"].in_flight[V8] == 0


async def test_the_wait_is_bounded_and_says_why() -> None:
    pool = NodePool()
    pool.upsert(node("a"))
    pool.set_current(V8)
    pool.mark("a", ready=False, phase="bring_up", version=V8)
    with pytest.raises(NoNodeReady, match=r"not ready: a \(bring_up\)"):
        await pool.acquire(0.05)


async def test_max_concurrent_holds_requests_until_one_finishes() -> None:
    pool = NodePool()
    pool.upsert(node("a", max_concurrent=1))
    pool.set_current(V8)
    pool.mark("a", ready=True, phase="ready", version=V8)
    first = await pool.acquire(1.0)
    second = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0)
    assert not second.done()
    pool.release(first)
    assert (await asyncio.wait_for(second, 1.0)).node.id == "a"


async def test_drain_waits_for_the_old_versions_leases_only() -> None:
    pool = NodePool()
    pool.upsert(node("a"))
    pool.set_current(V6)
    pool.mark("a", ready=True, phase="ready", version=V6)
    old = await pool.acquire(1.0)
    pool.set_current(V8)
    pool.mark("a", ready=False, phase="drain", version=V8)
    drained = asyncio.create_task(pool.wait_drained("a", (V6,), 5.0))
    await asyncio.sleep(0)
    assert not drained.done()
    pool.release(old)
    assert await asyncio.wait_for(drained, 1.0) == 0
    # A drain that times out says how many were left.
    pool.mark("a", ready=True, phase="ready")
    await pool.acquire(1.0)
    assert await pool.wait_drained("a", (V8,), 0.01) == 1


async def test_release_after_the_node_was_removed_is_harmless() -> None:
    pool = NodePool()
    pool.upsert(node("a"))
    pool.set_current(V8)
    pool.mark("a", ready=True, phase="ready", version=V8)
    lease = await pool.acquire(1.0)
    pool.remove("a")
    pool.release(lease)
    assert pool.in_flight_by_version() == {}


def test_a_node_that_just_failed_is_avoided_while_another_can_take_the_request() -> None:
    nodes = [load("a", 0), load("b", 3)]
    assert pick(nodes, V8, frozenset({"a"})) == "b"
    assert pick([load("a", 0)], V8, frozenset({"a"})) == "a"  # the only one: better than nothing


def test_a_bridge_version_serves_only_where_the_current_version_cannot() -> None:
    nodes = [load("a", 3, version=V6), load("b", 3, version=V8), load("c", 0, version=V6)]
    assert pick(nodes, V8, bridge=frozenset({V6})) == "b"  # the current version first, busy or not
    full = [load("a", 1, version=V6), load("b", 4, version=V8)]
    assert pick(full, V8, bridge=frozenset({V6})) == "a"  # the current version is at capacity
    assert pick(full, V8) is None  # no bridge: no old version


def test_among_is_a_hard_limit() -> None:
    nodes = [load("a", 0), load("b", 3)]
    assert pick(nodes, V8, among=frozenset({"b"})) == "b"
    assert pick(nodes, V8, among=frozenset()) is None


async def test_a_waiter_limited_to_some_nodes_does_not_block_the_others() -> None:
    pool = NodePool()
    for n in ("a", "b"):
        pool.upsert(node(n, max_concurrent=1))
    pool.set_current(V8)
    pool.mark("a", ready=True, phase="ready", version=V8)
    pool.mark("b", ready=False, phase="bring_up", version=V8)
    held = await pool.acquire(1.0)
    only_b = asyncio.create_task(pool.acquire(5.0, among=frozenset({"b"})))
    await asyncio.sleep(0)
    pool.release(held)
    anyone = await pool.acquire(1.0)  # the waiter for b alone does not hold a's capacity
    assert anyone.node.id == "a" and not only_b.done()
    pool.mark("b", ready=True, phase="ready")
    assert (await only_b).node.id == "b"
