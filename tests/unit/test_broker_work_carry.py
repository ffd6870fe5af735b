"""A switch carries each node's work to the new version, end to end against the in-memory fakes."""

from __future__ import annotations

from services.broker.coordinator import Coordinator, Policies
from services.broker.handoff import HandoffPolicy
from services.broker.metrics import BrokerMetrics
from services.broker.models import NodeSet
from services.broker.node_store import BrokerStore, kv_store
from services.broker.node_work import NodeWork, NodeWorks, WorkKind
from services.broker.pool import NodePool, SlotPhase
from shared.events import BrokerRefreshed, NodeOutcome
from shared.metrics import ServiceMetrics
from shared.registry_api import RegistryState
from tests.unit.broker_fakes import (
    FAST,
    MODEL,
    V6,
    V8,
    FakeMLNodes,
    FakePublisher,
    FakeRegistry,
    Harness,
    node,
    running_on_v6,
    switch_on,
)
from tests.unit.kv_fakes import MemoryKv

API = "/api/v1"
POW_BODY: dict[str, object] = {
    "url": "http://api-node:9100/v1/poc-batches",
    "block_hash": "0xabc",
    "block_height": 12000,
    "params": {"dim": 4096, "n_layers": 32},
}
TRAIN_BODY: dict[str, object] = {"train_config": {"lr": 0.001}, "train_env": {"WORLD_SIZE": "1"}}
GENERATE = NodeWork(kind=WorkKind.POW_GENERATE, params=POW_BODY, route=f"{API}/pow/init/generate")
STOPPED = NodeWork(kind=WorkKind.STOPPED, route=f"{API}/stop")
TRAIN = NodeWork(kind=WorkKind.TRAIN, params=TRAIN_BODY, route=f"{API}/train/start")
OWN_MODEL = NodeWork(
    kind=WorkKind.INFERENCE,
    model="org/other",
    args=("--tp", "2"),
    dtype="float16",
    route=f"{API}/inference/up",
)


def outcome(publisher: FakePublisher, node_id: str = "a") -> NodeOutcome:
    (event,) = [e for e in publisher.events if isinstance(e, BrokerRefreshed)]
    return {o.node_id: o for o in event.nodes}[node_id]


def in_pow(h: Harness, node_id: str, phase: str) -> None:
    """The API node ran PoC on v3.0.6 (through the broker, so the work is recorded too)."""
    h.mlnodes.states[(node_id, V6)] = "POW"
    h.mlnodes.pow_phase[(node_id, V6)] = phase


def coordinator_on(
    store: BrokerStore, mlnodes: FakeMLNodes, registry: FakeRegistry, publisher: FakePublisher
) -> Coordinator:
    """A broker process on `store`: what a restart sees is only what was persisted."""
    pool = NodePool()
    return Coordinator(
        store,
        mlnodes,
        pool,
        publisher,
        registry,
        BrokerMetrics(ServiceMetrics("broker"), pool),
        Policies(handoff=FAST, pending=HandoffPolicy(stop_attempts=1), heal=FAST),
    )


async def test_a_pow_generate_is_carried_to_the_new_version() -> None:
    h = await running_on_v6("a", "b")
    await h.coordinator.works.record("a", GENERATE)
    in_pow(h, "a", "GENERATING")
    await switch_on(h.coordinator, h.registry)

    assert h.mlnodes.started == [("a", V8, f"{API}/pow/init/generate", POW_BODY)]
    assert h.mlnodes.states[("a", V6)] == "STOPPED" and h.mlnodes.states[("a", V8)] == "POW"
    assert h.mlnodes.gpu["a"] == V8
    assert h.mlnodes.of("up", V8, "a") == 0  # no model loaded over the PoC
    slot = h.pool.slots["a"]
    assert slot.phase is SlotPhase.POW and not slot.ready and slot.version == V8
    got = outcome(h.publisher)
    assert (got.outcome, got.work, got.carried) == ("ready", "pow_generate", True)
    # The node without work serves the configured model, as before.
    assert h.pool.slots["b"].ready and h.mlnodes.ups == [("b", V8, MODEL, None)]
    assert (outcome(h.publisher, "b").work, outcome(h.publisher, "b").carried) == ("inference", True)
    record = await h.store.transition.load()
    assert record is not None and record.outcomes["a"].work == "pow_generate"
    carried = "mlnode_upgrade_broker_work_carried_total"
    assert h.metrics.sample(carried, work="pow_generate", carried="true") == 1
    assert h.metrics.sample(carried, work="inference", carried="true") == 1


async def test_a_round_the_old_version_moved_on_to_validate_goes_on_validating() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", GENERATE)
    in_pow(h, "a", "VALIDATING")
    await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.of("pow_status", V6, "a") == 1
    assert h.mlnodes.started == [("a", V8, f"{API}/pow/init/validate", POW_BODY)]
    assert outcome(h.publisher).work == "pow_validate"


async def test_heal_leaves_a_carried_pow_node_in_pow() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", GENERATE)
    in_pow(h, "a", "GENERATING")
    await switch_on(h.coordinator, h.registry)
    await h.coordinator.reconcile()
    assert h.mlnodes.of("up", V8) == 0 and len(h.mlnodes.started) == 1
    assert h.pool.slots["a"].phase is SlotPhase.POW


async def test_a_stopped_node_stays_stopped_through_the_switch_and_heal() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", STOPPED)
    h.mlnodes.states[("a", V6)] = "STOPPED"  # the API node stopped it
    del h.mlnodes.gpu["a"]
    await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.of("up", V8) == 0 and h.mlnodes.started == []
    assert h.pool.slots["a"].phase is SlotPhase.STOPPED and not h.pool.slots["a"].ready
    got = outcome(h.publisher)
    assert (got.outcome, got.work, got.carried) == ("ready", "stopped", True)

    await h.coordinator.heal()
    await h.coordinator.reconcile()
    assert h.mlnodes.of("up") == 0 and "a" not in h.mlnodes.gpu
    assert h.pool.slots["a"].phase is SlotPhase.STOPPED


async def test_training_is_carried() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", TRAIN)
    h.mlnodes.states[("a", V6)] = "TRAIN"
    await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.started == [("a", V8, f"{API}/train/start", TRAIN_BODY)]
    assert h.mlnodes.states[("a", V8)] == "TRAIN" and h.mlnodes.of("up", V8) == 0
    assert h.pool.slots["a"].phase is SlotPhase.TRAIN and not h.pool.slots["a"].ready
    assert (outcome(h.publisher).work, outcome(h.publisher).carried) == ("train", True)


async def test_inference_set_by_the_api_node_carries_its_own_model_and_dtype() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", OWN_MODEL)
    await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.ups == [("a", V8, "org/other", "float16")]
    assert h.pool.slots["a"].ready and h.pool.slots["a"].phase is SlotPhase.READY
    assert (outcome(h.publisher).work, outcome(h.publisher).carried) == ("inference", True)


async def test_a_failing_pow_init_on_the_new_version_is_reported_not_carried() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", GENERATE)
    in_pow(h, "a", "GENERATING")
    h.mlnodes.faults[("a", V8, "start_work")] = [500] * FAST.up_attempts
    await switch_on(h.coordinator, h.registry)
    got = outcome(h.publisher)
    assert (got.outcome, got.work, got.carried) == ("failed", "stopped", False)
    assert "not carried" in got.detail and "500" in got.detail
    assert h.pool.slots["a"].phase is SlotPhase.FAILED and h.mlnodes.of("up", V8) == 0


async def test_unseen_pow_on_the_old_version_is_not_guessed_at() -> None:
    h = await running_on_v6("a")
    in_pow(h, "a", "GENERATING")  # started behind the broker's back: no record
    await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.started == [] and h.mlnodes.of("up", V8) == 0
    assert h.mlnodes.states[("a", V6)] == "STOPPED"
    got = outcome(h.publisher)
    assert got.carried is False and "unknown" in got.detail


async def test_a_restarted_broker_still_carries_the_persisted_work() -> None:
    kv = MemoryKv()
    store = kv_store(kv)  # type: ignore[arg-type]
    await store.nodes.mutate(lambda _: NodeSet(seeded=True, nodes=(node("a"),)))
    mlnodes, publisher = FakeMLNodes(), FakePublisher()
    registry = FakeRegistry(RegistryState(current_version=V6, last_used_version=V6, current_transition="s"))
    mlnodes.running("a", V6)
    first = coordinator_on(store, mlnodes, registry, publisher)
    await first.start(())
    await first.reconcile()
    await first.works.record("a", GENERATE)
    mlnodes.states[("a", V6)] = "POW"
    await first.shutdown()

    second = coordinator_on(kv_store(kv), mlnodes, registry, publisher)  # type: ignore[arg-type]
    await second.start(())
    assert second.works.get("a") == GENERATE  # read back through the stored format
    await switch_on(second, registry)
    assert mlnodes.started == [("a", V8, f"{API}/pow/init/generate", POW_BODY)]
    assert mlnodes.of("up", V8) == 0
    assert (outcome(publisher).work, outcome(publisher).carried) == ("pow_generate", True)


async def test_a_restarted_broker_shows_a_pow_node_in_pow_and_brings_nothing_up() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", GENERATE)
    in_pow(h, "a", "GENERATING")
    await h.coordinator.shutdown()
    again = coordinator_on(h.store, h.mlnodes, h.registry, h.publisher)
    await again.start(())
    await again.reconcile()
    assert again.pool.slots["a"].phase is SlotPhase.POW and not again.pool.slots["a"].ready
    assert h.mlnodes.of("up") == 0 and h.mlnodes.states[("a", V6)] == "POW"


async def test_removing_a_node_forgets_its_work() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", GENERATE)
    await h.coordinator.remove_node("a")
    assert h.coordinator.works.get("a") is None
    assert await h.store.work.load() == NodeWorks()

    h.mlnodes.states[("a", V6)] = "STOPPED"
    del h.mlnodes.gpu["a"]
    await h.coordinator.add_node(node("a"))  # the same id again is a new node: it serves the model
    await h.coordinator.heal()
    assert h.mlnodes.ups == [("a", V6, MODEL, None)] and h.pool.slots["a"].ready


async def test_an_api_node_call_waiting_for_the_node_takes_over_from_the_switch() -> None:
    h = await running_on_v6("a")
    await h.coordinator.works.record("a", OWN_MODEL)
    with h.coordinator.works.waiting("a", f"{API}/inference/up"):
        await switch_on(h.coordinator, h.registry)
    assert h.mlnodes.of("up", V8) == 0 and h.mlnodes.started == []
    assert h.mlnodes.states[("a", V6)] == "STOPPED"  # the stop still happened
    assert not h.pool.slots["a"].ready
    got = outcome(h.publisher)
    assert got.carried is False and f"{API}/inference/up" in got.detail
    assert h.coordinator.works.waiting_route("a") is None  # released once the call is done


async def test_each_model_load_a_switch_makes_is_measured_and_kept() -> None:
    h = await running_on_v6("a")
    await switch_on(h.coordinator, h.registry)
    measured = h.coordinator.load_times.times.expected("a", V8)
    assert measured is not None and measured >= 0
    assert (await h.store.load_times.load()).expected("a", V8) == measured
    await h.coordinator.remove_node("a")
    assert (await h.store.load_times.load()).loads == {}
