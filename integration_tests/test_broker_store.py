"""The broker's KV documents on a real JetStream bucket: persisted, compare-and-swap, re-decided."""

from __future__ import annotations

from services.broker.models import NodeConfig, NodeSet, PendingStop, PendingStops
from services.broker.node_store import BROKER_BUCKET, kv_store
from services.broker.transition import TransitionRecord
from shared.bus import Bus
from shared.kv_document import KvDocument, ModelCodec
from shared.kv_store import VersionedStore
from shared.versions import MLNodeVersion

V6, V8 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8")


def node(node_id: str) -> NodeConfig:
    return NodeConfig(id=node_id, host="h", inference_port=5000, poc_port=8080)


async def test_documents_survive_a_new_store_instance(bus: Bus) -> None:
    kv = VersionedStore(await bus.ensure_bucket(BROKER_BUCKET))
    first = kv_store(kv)
    assert await first.transition.load() is None and await first.nodes.load() == NodeSet()
    await first.nodes.mutate(lambda s: NodeSet(seeded=True, nodes=(node("a"),)))
    await first.pending.mutate(lambda p: p.add(PendingStop(node_id="a", version=V6, transition_id="t")))
    record = TransitionRecord(transition_id="t", target=V8, previous=V6, stop=(V6,), nodes=("a",))
    await first.transition.mutate(lambda _: record)

    again = kv_store(VersionedStore(await bus.ensure_bucket(BROKER_BUCKET)))  # as after a restart
    assert (await again.nodes.load()).nodes == (node("a"),)
    assert [p.key for p in (await again.pending.load()).items] == ["a@v3.0.6"]
    assert await again.transition.load() == record


async def test_a_write_based_on_a_stale_read_is_decided_again_on_fresh_data(bus: Bus) -> None:
    kv = VersionedStore(await bus.ensure_bucket(BROKER_BUCKET))
    mine = KvDocument(kv, "pending_stops", ModelCodec(PendingStops), PendingStops())
    other = KvDocument(kv, "pending_stops", ModelCodec(PendingStops), PendingStops())
    await mine.load()
    await other.mutate(lambda p: p.add(PendingStop(node_id="b", version=V6, transition_id="t")))
    # `mine` read before `other` wrote: its write is refused, re-read, and applied on top.
    result = await mine.mutate(lambda p: p.add(PendingStop(node_id="a", version=V6, transition_id="t")))
    assert sorted(p.node_id for p in result.items) == ["a", "b"]
    assert sorted(p.node_id for p in (await other.load()).items) == ["a", "b"]
