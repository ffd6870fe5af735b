"""The staged switch carried out by the coordinator over fake MLNodes: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.broker.coordinator import Coordinator, Policies
from services.broker.metrics import BrokerMetrics
from services.broker.models import NodeConfig, NodeSet
from services.broker.node_store import BrokerStore, memory_store
from services.broker.pool import NodePool, SlotPhase
from services.broker.staging import StagingPolicy
from shared.events import VersionChanged
from shared.metrics import ServiceMetrics
from shared.registry_api import PendingPlan, RegistryState
from shared.versions import MLNodeVersion
from tests.unit.broker_fakes import (
    FAST,
    V6,
    V8,
    FakeMLNodes,
    FakePublisher,
    FakeRegistry,
    changed,
    node,
    switch_on,
)

HEIGHT = 100
STAGING = StagingPolicy(share=0.5, old_floor=0.25, default_load_s=10, margin_s=0, margin_blocks=1)


def state_at(height: int, *, plan: PendingPlan | None = None, current: MLNodeVersion = V6) -> RegistryState:
    return RegistryState(
        current_version=current,
        last_used_version=current,
        current_transition="sync-1",
        last_height=height,
        pending=(plan,) if plan else (),
        block_time_s=5.0,
    )


def build(store: BrokerStore, mlnodes: FakeMLNodes, registry: FakeRegistry) -> tuple[Coordinator, NodePool]:
    pool = NodePool()
    coordinator = Coordinator(
        store,
        mlnodes,
        pool,
        FakePublisher(),
        registry,
        BrokerMetrics(ServiceMetrics("broker"), pool),
        Policies(handoff=FAST, heal=FAST, staging=STAGING, default_block_time_s=5.0),
    )
    return coordinator, pool


async def fleet(*ids: str) -> tuple[Coordinator, FakeMLNodes, FakeRegistry, NodePool]:
    mlnodes = FakeMLNodes()
    registry = FakeRegistry(state_at(90))
    store = memory_store(nodes=NodeSet(seeded=True, nodes=tuple(node(i) for i in ids)))
    coordinator, pool = build(store, mlnodes, registry)
    for i in ids:
        mlnodes.running(i, V6)
    await coordinator.start(())
    await coordinator.reconcile()
    assert all(pool.slots[i].ready for i in ids)
    return coordinator, mlnodes, registry, pool


async def until(pool: NodePool, check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Until `check()` holds, woken by every change in the pool."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await pool.wait_change(timeout_s)


async def staging_round(c: Coordinator) -> None:
    await c.probe_readiness()
    await c.scheduler.wait_upkeep()


async def test_half_the_fleet_is_loaded_before_the_height_and_serves_at_once_at_it() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b", "c", "d")
    plan = PendingPlan(height=HEIGHT, node_version=V8)  # lead 10 s at 5 s a block: 2 + 1 blocks
    registry.current = state_at(96, plan=plan)
    await staging_round(c)
    assert not any(mlnodes.states[(n, V8)] == "INFERENCE" for n in "abcd")  # not due yet

    registry.current = state_at(97, plan=plan)
    await staging_round(c)
    early = [n for n in "abcd" if pool.slots[n].phase is SlotPhase.STAGED]
    assert early == ["a", "b"]
    await c.probe_readiness()  # broker.readiness shows the plan and what is staged already
    shown = c.readiness.staging if c.readiness is not None else None
    assert shown is not None and shown.early == shown.staged == ("a", "b")
    assert (shown.old_capacity, shown.new_capacity) == (8, 8)
    # Planned again with the loads just measured (the fakes load at once): a later start now.
    assert shown.start_height is not None and 97 <= shown.start_height < HEIGHT
    for n in early:
        assert mlnodes.states[(n, V6)] == "STOPPED" and mlnodes.states[(n, V8)] == "INFERENCE"
        assert not pool.slots[n].ready  # serves nothing before the height
    for n in ("c", "d"):
        assert pool.slots[n].ready and pool.slots[n].version == V6
    assert c.load_times.times.expected("a", V8) is not None
    await c.heal()  # the heal leaves staged nodes alone
    assert mlnodes.states[("a", V6)] == "STOPPED"

    await switch_on(c, registry, changed())
    assert all(pool.slots[n].ready and pool.slots[n].version == V8 for n in "abcd")
    assert mlnodes.of("up", V8, "a") == 1  # loaded once, early; the switch found it serving
    await staging_round(c)
    assert c.stager.staged is None  # done


async def test_a_cancelled_plan_hands_the_staged_nodes_back_before_the_height() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b")
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    assert pool.slots["a"].phase is SlotPhase.STAGED
    registry.current = state_at(98)  # the plan is gone
    await staging_round(c)
    assert pool.slots["a"].ready and pool.slots["a"].version == V6
    assert mlnodes.states[("a", V8)] == "STOPPED" and mlnodes.states[("a", V6)] == "INFERENCE"
    assert c.stager.staged is None


async def test_an_early_load_that_fails_puts_the_node_back_on_the_old_version() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b")
    mlnodes.faults[("a", V8, "up")] = [500] * 10
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    assert pool.slots["a"].ready and pool.slots["a"].version == V6
    assert mlnodes.states[("a", V6)] == "INFERENCE"
    assert c.stager.staged is not None and c.stager.staged.nodes == ()  # not tried again for this plan


async def test_one_node_alone_switches_at_the_height_as_before() -> None:
    c, mlnodes, registry, pool = await fleet("a")
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    assert c.stager.staged is None and pool.slots["a"].ready and pool.slots["a"].version == V6
    assert c.stager.planned is not None and "one node alone" in c.stager.planned.why_not
    assert mlnodes.of("up", V8) == 0


async def test_a_restarted_broker_keeps_its_staged_nodes_staged() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b")
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    assert pool.slots["a"].phase is SlotPhase.STAGED
    again, again_pool = build(c.store, mlnodes, registry)  # the same persisted state
    await again.start(())
    await again.reconcile()  # the heal must not bring the old version up on the staged node
    assert mlnodes.states[("a", V6)] == "STOPPED" and mlnodes.states[("a", V8)] == "INFERENCE"
    await staging_round(again)
    assert again_pool.slots["a"].phase is SlotPhase.STAGED and not again_pool.slots["a"].ready
    assert again_pool.slots["b"].ready
    # Not loaded twice: the restaged handoff's inference/up is answered 409, the target is found
    # INFERENCE and only its /v1/models is checked.
    assert [up[:2] for up in mlnodes.ups].count(("a", V8)) == 1
    on_a = [call for call in mlnodes.calls if call[0] == "a"]
    assert on_a[-3:] == [("a", "up", V8), ("a", "state", V8), ("a", "health", V8)]


async def test_a_restarted_broker_holds_its_staging_while_the_first_check_of_a_node_runs() -> None:
    # The restarted broker's first staging round may come before upkeep has judged every node;
    # a node whose check is under way shows the check's steps, not STARTING. Judging the plan
    # then would count b as not serving and hand a back (a stop sent to the staged version).
    c, mlnodes, registry, _pool = await fleet("a", "b")
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    again, again_pool = build(c.store, mlnodes, registry)
    await again.start(())
    again_pool.adopt_current(V6)  # known at start, as the real broker knows it from its record
    again_pool.note_phase("b", SlotPhase.PROBE)  # b's first check is running
    await staging_round(again)
    assert again.stager.staged is not None and again.stager.staged.nodes == ("a",)
    assert mlnodes.of("stop", V8) == 0 and mlnodes.states[("a", V8)] == "INFERENCE"


async def test_the_api_nodes_call_releases_a_staged_node_and_it_is_not_staged_again_for_the_plan() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b", "c", "d")
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await staging_round(c)
    assert c.stager.staged is not None and c.stager.staged.nodes == ("a", "b")
    await c.stager.release("a")  # as the node endpoint does, in the node's turn
    assert mlnodes.states[("a", V8)] == "STOPPED"  # the early load let go
    assert pool.slots["a"].version == V6 and pool.slots["a"].phase is SlotPhase.STOPPED
    assert c.stager.staged.nodes == ("b",)
    await c.stager.release("c")  # not staged: nothing to do
    assert pool.slots["c"].ready and mlnodes.states[("c", V6)] == "INFERENCE"
    await staging_round(c)
    assert c.stager.staged is not None and c.stager.staged.nodes == ("b",)
    assert pool.slots["b"].phase is SlotPhase.STAGED and mlnodes.of("up", V8, "a") == 1


async def test_a_rollback_moves_a_first_wave_while_the_rest_serve_the_version_rolled_back_from() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b", "c", "d")
    during: list[tuple[str, str, MLNodeVersion]] = []
    load = mlnodes.inference_up

    async def up_watched(
        node: NodeConfig, version: MLNodeVersion, model: str, args: tuple[str, ...], dtype: str | None = None
    ) -> None:
        lease = await pool.acquire(0.5)  # what a request gets while this node loads
        during.append((node.id, lease.node.id, lease.version))
        pool.release(lease)
        await load(node, version, model, args, dtype)

    mlnodes.inference_up = up_watched  # type: ignore[method-assign]
    rollback = VersionChanged.model_validate(
        {"transition_id": "rollback-1", "previous": V6, "current": V8, "height": 90, "reason": "rollback"}
    )
    await switch_on(c, registry, rollback)
    assert {n for n, _, _ in during[:2]} == {"a", "b"}  # the first wave: half, as staging picks
    _, served_by, version = during[0]
    assert served_by in ("c", "d") and version == V6  # the rest serve on while the wave loads
    ups = [i for i, (n, call, v) in enumerate(mlnodes.calls) if call == "up" and n in "ab" and v == V8]
    stops = [i for i, (n, call, v) in enumerate(mlnodes.calls) if call == "stop" and n in "cd"]
    assert max(ups) < min(stops)  # the rest go only once the first wave serves
    assert all(pool.slots[n].ready and pool.slots[n].version == V8 for n in "abcd")
    assert pool.bridge == frozenset()
    assert all(mlnodes.states[(n, V6)] == "STOPPED" for n in "abcd")


async def test_a_switch_at_a_height_closes_every_old_gate_at_once() -> None:
    """Unlike a rollback: after the height the chain wants the new version, so no old one bridges."""
    c, mlnodes, registry, pool = await fleet("a", "b")
    ready_on_old: list[int] = []
    load = mlnodes.inference_up

    async def up_watched(
        node: NodeConfig, version: MLNodeVersion, model: str, args: tuple[str, ...], dtype: str | None = None
    ) -> None:
        ready_on_old.append(sum(1 for s in pool.slots.values() if s.ready and s.version == V6))
        await load(node, version, model, args, dtype)

    mlnodes.inference_up = up_watched  # type: ignore[method-assign]
    await switch_on(c, registry, changed())
    assert ready_on_old == [0, 0] and pool.bridge == frozenset()
    assert all(pool.slots[n].ready and pool.slots[n].version == V8 for n in "ab")


async def test_an_early_load_under_way_at_the_height_finishes_and_the_old_version_is_stopped_once() -> None:
    c, mlnodes, registry, pool = await fleet("a", "b")
    loading, let_go = asyncio.Event(), asyncio.Event()
    load = mlnodes.inference_up

    async def held_up(
        node: NodeConfig, version: MLNodeVersion, model: str, args: tuple[str, ...], dtype: str | None = None
    ) -> None:
        if node.id == "a" and version == V8:
            loading.set()
            await let_go.wait()
        await load(node, version, model, args, dtype)

    mlnodes.inference_up = held_up  # type: ignore[method-assign]
    registry.current = state_at(97, plan=PendingPlan(height=HEIGHT, node_version=V8))
    await c.probe_readiness()
    await asyncio.wait_for(loading.wait(), 5)  # a's early load is under way...
    switching = asyncio.create_task(switch_on(c, registry, changed()))  # ...when the height comes
    await until(pool, lambda: pool.current == V8 and pool.slots["b"].ready)
    assert not pool.slots["a"].ready  # still loading: the switch waits for it, does not cancel it
    let_go.set()
    await asyncio.wait_for(switching, 5)
    assert pool.slots["a"].ready and pool.slots["a"].version == V8
    assert mlnodes.of("stop", V6, "a") == 1 and mlnodes.of("up", V8, "a") == 1
    assert mlnodes.of("stop", V6, "b") == 1
