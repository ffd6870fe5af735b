"""The registry's service logic behind its ports, without sockets: a command is decided, written
with its outbox, published once and cleared; a conflicting writer makes it decide again."""

from __future__ import annotations

from services.version_registry.core import CoreState, apply
from services.version_registry.store import STATE_CODEC, StoredState
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled
from shared.versions import MLNodeVersion
from tests.unit.registry_fakes import NOW, FakeChangeLog, registry_rig

V6, V8 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8")
CAS_CONFLICTS = "mlnode_upgrade_registry_cas_conflicts_total"
TRANSITIONS = "mlnode_upgrade_registry_transitions_total"


async def test_a_block_at_a_plans_height_switches_and_publishes_the_outbox_once() -> None:
    rig = await registry_rig()
    service = rig.service
    await service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)  # adopts v3.0.6
    await service.submit(UpgradeScheduled(height=100, node_version=V8), seq=2)
    assert [(c.current, c.reason) for c in rig.changes.published] == [(V6, "sync")]
    stored = await service.submit(BlockCommitted(height=100), seq=3)
    assert [(c.current, c.reason) for c in rig.changes.published[1:]] == [(V8, "plan")]
    assert stored.state.outbox == () and rig.document.value.outbox == ()
    assert stored.state.core.current == V8 and service.latest == stored
    # The switch was written with its outbox before it was published, then the outbox cleared.
    assert [len(w.outbox) for w in rig.document.writes[-2:]] == [1, 0]
    # Replaying the block (a redelivery) decides nothing and publishes nothing again.
    await service.submit(BlockCommitted(height=100), seq=3)
    assert len(rig.changes.published) == 2
    assert rig.metrics.sample(TRANSITIONS, reason="plan") == 1


async def test_a_conflicting_writer_is_counted_and_the_command_decided_again_on_its_state() -> None:
    rig = await registry_rig()
    service = rig.service
    other = StoredState(
        core=apply(CoreState(), ChainVersionObserved(current_version=V6, height=90), NOW, 1).state
    )
    rig.document.other_writes.append(other)
    stored = await service.submit(UpgradeScheduled(height=100, node_version=V8), seq=2)
    assert rig.metrics.sample(CAS_CONFLICTS) == 1
    assert stored.state.core.current == V6  # the other writer's snapshot is kept
    assert [p.height for p in stored.state.core.pending] == [100]


async def test_start_up_publishes_what_the_outbox_still_owes_and_skips_what_the_stream_has() -> None:
    synced = apply(CoreState(), ChainVersionObserved(current_version=V6, height=90), NOW, 1).state
    planned = apply(synced, UpgradeScheduled(height=100, node_version=V8), NOW, 2).state
    switched = apply(planned, BlockCommitted(height=100), NOW, 3)
    assert len(switched.changes) == 1
    left = StoredState(core=switched.state, outbox=switched.changes)
    # Crashed after publishing but before clearing: the stream already has it.
    stream = FakeChangeLog(published=list(switched.changes))
    rig = await registry_rig(left, stream)
    assert len(stream.published) == 1 and rig.document.value.outbox == ()
    # Crashed before publishing: it goes out once at start-up.
    rig = await registry_rig(left)
    assert rig.changes.published == list(switched.changes) and rig.document.value.outbox == ()


def test_the_state_is_stored_with_a_format_and_a_state_written_before_formats_still_reads() -> None:
    state = StoredState(
        core=apply(CoreState(), ChainVersionObserved(current_version=V6, height=90), NOW, 1).state
    )
    assert b'"format":1' in STATE_CODEC.encode(state)
    assert STATE_CODEC.decode(STATE_CODEC.encode(state)) == state
    assert STATE_CODEC.decode(state.model_dump_json().encode()) == state  # the layout of before
