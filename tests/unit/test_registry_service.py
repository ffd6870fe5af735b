"""The registry's service logic behind its ports, without sockets: a command is decided, written
with its outbox, published once and cleared; a conflicting writer makes it decide again."""

from __future__ import annotations

import pytest

from services.version_registry.core import HISTORY_KEPT, Command, CoreState, apply
from services.version_registry.store import STATE_CODEC, StoredState, TransitionLog
from shared.bus import CHAIN_STREAM
from shared.consumer import Delivery
from shared.events import BlockCommitted, BrokerRefreshed, ChainVersionObserved, Event, UpgradeScheduled
from shared.kv_document import MemoryDocument
from shared.versions import MLNodeVersion
from tests.unit.registry_fakes import NOW, FakeChangeLog, RegistryRig, registry_rig

V6, V8, V9 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8"), MLNodeVersion("v3.0.9")
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


def chain(seq: int) -> Delivery:
    return Delivery(
        subject="chain.block", stream=CHAIN_STREAM.name, stream_seq=seq, num_delivered=1, published_at=None
    )


def blocks(heights: range, first_seq: int) -> list[tuple[Event, Delivery]]:
    return [(BlockCommitted(height=h), chain(first_seq + i)) for i, h in enumerate(heights)]


def switches(rig: RegistryRig) -> list[tuple[MLNodeVersion, str, int, str]]:
    return [(c.current, c.reason, c.height, c.transition_id) for c in rig.changes.published]


async def planned_rig() -> RegistryRig:
    """v3.0.6 adopted at 90 (CHAIN seq 1), v3.0.8 planned for 100 (seq 2)."""
    rig = await registry_rig()
    await rig.service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)
    await rig.service.submit(UpgradeScheduled(height=100, node_version=V8), seq=2)
    return rig


async def test_a_batch_of_blocks_is_decided_together_and_written_once() -> None:
    rig = await registry_rig()
    await rig.service.handle_batch(blocks(range(1, 201), first_seq=1))
    assert len(rig.document.writes) == 1
    assert rig.document.value.core.last_height == 200 and rig.document.value.core.chain_seq == 200
    assert rig.service.latest.state.core.last_height == 200
    assert rig.service.latest.revision == rig.document.revision
    assert rig.changes.published == []


async def test_a_batch_crossing_a_plans_height_publishes_one_switch_as_one_by_one_does() -> None:
    batched, single = await planned_rig(), await planned_rig()
    events = blocks(range(91, 111), first_seq=3)
    before = len(batched.document.writes)
    await batched.service.handle_batch(events)
    for event, delivery in events:
        await single.service.handle(event, delivery)
    assert [(c.current, c.reason) for c in batched.changes.published] == [(V6, "sync"), (V8, "plan")]
    assert switches(batched) == switches(single)
    assert batched.document.value == single.document.value and batched.document.value.outbox == ()
    assert batched.document.value.core.current == V8 and batched.document.value.core.last_height == 110
    # Written with its outbox, then the outbox cleared: two writes instead of one per block.
    assert [len(w.outbox) for w in batched.document.writes[-2:]] == [1, 0]
    assert len(batched.document.writes) == before + 2 and len(single.document.writes) == before + 20 + 1
    assert batched.metrics.sample(TRANSITIONS, reason="plan") == 1


async def test_a_redelivered_batch_changes_nothing() -> None:
    rig = await planned_rig()
    events = blocks(range(91, 111), first_seq=3)
    await rig.service.handle_batch(events)
    before, writes, published = rig.document.value, len(rig.document.writes), len(rig.changes.published)
    await rig.service.handle_batch(events)
    await rig.service.handle_batch(events[5:12])  # part of it, again
    assert rig.document.value == before and len(rig.document.writes) == writes
    assert len(rig.changes.published) == published
    assert rig.metrics.sample(TRANSITIONS, reason="plan") == 1


async def test_a_batch_holding_the_snapshot_the_plan_and_the_blocks_switches_in_one_write() -> None:
    rig = await registry_rig()
    broker = Delivery(
        subject="broker.refreshed", stream="BROKER", stream_seq=1, num_delivered=1, published_at=None
    )
    events: list[tuple[Event, Delivery]] = [
        (ChainVersionObserved(current_version=V6, height=90), chain(1)),
        (UpgradeScheduled(height=100, node_version=V8), chain(2)),
        *blocks(range(95, 106), first_seq=3),
        (BrokerRefreshed(transition_id="100-v3.0.8", version=V8), broker),
    ]
    await rig.service.handle_batch(events)
    assert [(c.current, c.reason) for c in rig.changes.published] == [(V6, "sync"), (V8, "plan")]
    assert [len(w.outbox) for w in rig.document.writes] == [2, 0]  # both switches, then cleared
    assert rig.document.value.core.current == V8 and rig.document.value.core.last_height == 105
    assert rig.document.value.core.current_transition == "100-v3.0.8"
    assert rig.document.value.core.last_used == V8  # the broker's refresh, decided after the switch


async def test_a_conflicting_writer_makes_the_whole_batch_decided_again_and_reported_once() -> None:
    rig = await planned_rig()
    other = rig.document.value.model_copy(
        update={"core": rig.document.value.core.model_copy(update={"last_height": 95})}
    )
    rig.document.other_writes.append(other)
    await rig.service.handle_batch(blocks(range(91, 106), first_seq=3))
    assert rig.metrics.sample(CAS_CONFLICTS) == 1
    assert [(c.current, c.reason) for c in rig.changes.published] == [(V6, "sync"), (V8, "plan")]
    assert rig.metrics.sample(TRANSITIONS, reason="plan") == 1
    assert rig.document.value.core.last_height == 105 and rig.document.value.outbox == ()


# --- the transition log: every switch, beside a state that keeps only the newest ----------------


async def switch_100_times(rig: RegistryRig) -> None:
    """Synced at 90 (seq 1), then 100 plans alternating v3.0.8 and v3.0.6 at 100..199, each on its block."""
    await rig.service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)
    for i in range(100):
        version = V8 if i % 2 == 0 else V6
        await rig.service.submit(UpgradeScheduled(height=100 + i, node_version=version), seq=2 + 2 * i)
        await rig.service.submit(BlockCommitted(height=100 + i), seq=3 + 2 * i)


def logged(log: TransitionLog) -> list[str]:
    return [t.transition_id for t in log.transitions]


async def test_the_transition_log_holds_every_switch_while_the_state_keeps_the_newest() -> None:
    rig = await registry_rig()
    await switch_100_times(rig)
    published = [c.transition_id for c in rig.changes.published]
    assert len(published) == 101 and published[0] == "sync-90-v3.0.6" and published[-1] == "199-v3.0.6"
    log = await rig.service.transitions.load()
    assert logged(log) == published  # all of them, in order, each once
    core = rig.document.value.core
    assert rig.document.value.outbox == ()
    assert len(core.history) == HISTORY_KEPT and core.transitions_total == 101
    assert [t.transition_id for t in core.history] == published[-HISTORY_KEPT:]
    everything = await rig.service.history(limit=1000)
    assert [t.transition_id for t in everything.transitions] == published
    last = await rig.service.history(limit=5)
    assert [t.transition_id for t in last.transitions] == published[-5:]
    assert last.transitions[-1].current == core.current == V6


async def test_a_state_from_before_the_log_answers_history_from_its_hot_history() -> None:
    core = run_core(
        ChainVersionObserved(current_version=V6, height=90),
        UpgradeScheduled(height=100, node_version=V8),
        BlockCommitted(height=100),
        UpgradeScheduled(height=101, node_version=V9),
        BlockCommitted(height=101),
    )
    assert len(core.history) == 3
    rig = await registry_rig(StoredState(core=core))
    assert (await rig.service.transitions.load()).transitions == ()  # no log yet
    assert (await rig.service.history(limit=10)).transitions == core.history
    assert (await rig.service.history(limit=2)).transitions == core.history[-2:]


async def test_a_state_from_before_the_log_keeps_its_history_in_order_after_the_next_switch() -> None:
    core = run_core(
        ChainVersionObserved(current_version=V6, height=90),
        UpgradeScheduled(height=100, node_version=V8),
        BlockCommitted(height=100),
        UpgradeScheduled(height=101, node_version=V9),
        BlockCommitted(height=101),
    )
    rig = await registry_rig(StoredState(core=core))
    await rig.service.submit(UpgradeScheduled(height=110, node_version=V6), seq=core.chain_seq + 1)
    await rig.service.submit(BlockCommitted(height=110), seq=core.chain_seq + 2)
    ids = ["sync-90-v3.0.6", "100-v3.0.8", "101-v3.0.9", "110-v3.0.6"]
    assert [t.transition_id for t in (await rig.service.history(limit=10)).transitions] == ids
    assert [t.transition_id for t in (await rig.service.history(limit=1)).transitions] == ids[-1:]


async def test_a_crash_between_publishing_and_clearing_the_outbox_logs_each_switch_once() -> None:
    transitions = MemoryDocument(TransitionLog())
    rig = await registry_rig(transitions=transitions)
    await rig.service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)
    await rig.service.submit(UpgradeScheduled(height=100, node_version=V8), seq=2)
    rig.document.crash_on_clears = 1
    with pytest.raises(ConnectionError):
        await rig.service.submit(BlockCommitted(height=100), seq=3)
    left = rig.document.value
    assert [c.transition_id for c in left.outbox] == ["100-v3.0.8"]  # published, not cleared
    assert logged(transitions.value) == ["sync-90-v3.0.6", "100-v3.0.8"]
    # The next start finds the outbox: the stream has the switch, the log has it too.
    restarted = await registry_rig(left, rig.changes, transitions)
    assert restarted.document.value.outbox == ()
    assert [c.transition_id for c in rig.changes.published] == ["sync-90-v3.0.6", "100-v3.0.8"]
    assert logged(transitions.value) == ["sync-90-v3.0.6", "100-v3.0.8"]
    assert [t.transition_id for t in (await restarted.service.history(limit=10)).transitions] == [
        "sync-90-v3.0.6",
        "100-v3.0.8",
    ]
    # And it goes on logging the next switch once.
    await restarted.service.submit(UpgradeScheduled(height=101, node_version=V9), seq=4)
    await restarted.service.submit(BlockCommitted(height=101), seq=5)
    assert logged(transitions.value) == ["sync-90-v3.0.6", "100-v3.0.8", "101-v3.0.9"]


async def test_a_crash_before_the_log_was_written_logs_the_outbox_at_the_next_start() -> None:
    core = run_core(
        ChainVersionObserved(current_version=V6, height=90),
        UpgradeScheduled(height=100, node_version=V8),
    )
    switched = apply(core, BlockCommitted(height=100), NOW, 3)
    left = StoredState(core=switched.state, outbox=switched.changes)
    transitions = MemoryDocument(TransitionLog(transitions=core.history))  # sync-90 logged before
    stream = FakeChangeLog(published=list(switched.changes))  # published, then the process died
    rig = await registry_rig(left, stream, transitions)
    assert rig.document.value.outbox == () and len(stream.published) == 1
    assert logged(transitions.value) == ["sync-90-v3.0.6", "100-v3.0.8"]
    await rig.service.resume()  # a second start with nothing left: logs nothing again
    assert logged(transitions.value) == ["sync-90-v3.0.6", "100-v3.0.8"]


async def test_one_write_making_more_switches_than_the_state_keeps_logs_them_all() -> None:
    rig = await registry_rig()
    await rig.service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)
    for i in range(100):
        version = V8 if i % 2 == 0 else V6
        await rig.service.submit(UpgradeScheduled(height=100 + i, node_version=version), seq=2 + i)
    await rig.service.submit(BlockCommitted(height=199), seq=102)  # all 100 plans are due at once
    published = [c.transition_id for c in rig.changes.published]
    assert len(published) == 101
    assert logged(await rig.service.transitions.load()) == published


def run_core(*commands: Command) -> CoreState:
    """The core state after `commands`, chain commands numbered 1, 2, ... as the CHAIN stream would."""
    state = CoreState()
    for seq, command in enumerate(commands, start=1):
        state = apply(state, command, NOW, seq).state
    return state
