"""The broker's documents carry `"format": 1`; those written before formats existed still read."""

from __future__ import annotations

import json

from services.broker.models import NodeSet, PendingStop, PendingStops
from services.broker.node_store import kv_store
from services.broker.transition import TransitionRecord
from shared.kv_store import Versioned
from shared.versions import MLNodeVersion
from tests.unit.kv_fakes import MemoryKv

V6, V8 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8")


async def test_documents_are_written_with_a_format_and_old_ones_read() -> None:
    kv = MemoryKv()
    record = TransitionRecord(transition_id="t", target=V8, previous=V6, stop=(V6,), nodes=("a",))
    old = PendingStops(items=(PendingStop(node_id="a", version=V6, transition_id="t"),))
    kv.values["pending_stops"] = Versioned(old.model_dump_json().encode(), 1)  # as the old code wrote
    kv.values["transition"] = Versioned(record.model_dump_json().encode(), 1)
    store = kv_store(kv)  # type: ignore[arg-type]
    assert await store.pending.load() == old and await store.transition.load() == record
    assert await store.nodes.load() == NodeSet()

    await store.nodes.mutate(lambda s: NodeSet(seeded=True))
    await store.pending.mutate(lambda p: p.remove("a", V6))
    assert json.loads(kv.values["nodes"].value)["format"] == 1
    assert json.loads(kv.values["pending_stops"].value) == {"format": 1, "items": []}
    assert await kv_store(kv).pending.load() == PendingStops()  # type: ignore[arg-type]
