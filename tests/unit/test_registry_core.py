"""The registry's decisions, without NATS: examples for each rule, then properties over any sequence.

Chain commands carry their CHAIN stream sequence as the service passes it; `run` numbers them
after the last one the state has seen, as a stream would, and `(command, seq)` replays one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.version_registry.core import (
    BLOCK_TIMES,
    HISTORY_KEPT,
    MAX_SETTLED,
    Command,
    CoreState,
    Outcome,
    Rollback,
    RollbackRefused,
    apply,
    forget_stream_positions,
)
from services.version_registry.store import StoredState
from shared.events import (
    BlockCommitted,
    BrokerRefreshed,
    ChainPlan,
    ChainVersionObserved,
    UpgradeScheduled,
    VersionChanged,
)
from shared.registry_api import PendingPlan
from shared.versions import MLNodeVersion

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
V6, V8, V9, V10 = (MLNodeVersion(v) for v in ("v3.0.6", "v3.0.8", "v3.0.9", "v3.0.10"))

Item = Command | tuple[Command, int]
CHAIN_COMMANDS = (BlockCommitted, UpgradeScheduled, ChainVersionObserved)


def step(state: CoreState, item: Item) -> tuple[Outcome, int | None]:
    """Apply one command; chain commands get the next stream sequence unless one is given."""
    seq: int | None
    if isinstance(item, tuple):
        command, seq = item
    else:
        command = item
        seq = state.chain_seq + 1 if isinstance(command, CHAIN_COMMANDS) else None
    return apply(state, command, NOW, seq), seq


def run(items: Sequence[Item], state: CoreState | None = None) -> tuple[CoreState, list[VersionChanged]]:
    state = state or CoreState()
    changes: list[VersionChanged] = []
    for item in items:
        outcome, _ = step(state, item)
        state = outcome.state
        changes += outcome.changes
    return state, changes


def snap(
    version: MLNodeVersion, height: int | None = None, plans: dict[int, MLNodeVersion] | None = None
) -> ChainVersionObserved:
    listed = None if plans is None else tuple(ChainPlan(height=h, node_version=v) for h, v in plans.items())
    return ChainVersionObserved(current_version=version, height=height, plans=listed)


def synced(version: MLNodeVersion = V6, height: int = 90) -> CoreState:
    return run([snap(version, height)])[0]


def block(h: int) -> BlockCommitted:
    return BlockCommitted(height=h)


def blocks(first: int, last: int) -> list[Item]:
    return [block(h) for h in range(first, last + 1)]


def plan(h: int, v: MLNodeVersion) -> UpgradeScheduled:
    return UpgradeScheduled(height=h, node_version=v)


def pending(state: CoreState) -> list[tuple[int, MLNodeVersion]]:
    return [(p.height, p.node_version) for p in state.pending]


def test_fresh_registry_waits_for_the_chain_snapshot() -> None:
    state, changes = run([block(10), plan(20, V8), block(25)])
    assert state.current is None and not state.initialized and changes == []
    state, changes = run([snap(V8, 25)], state)
    # Starts from the chain's word: the plan at 20 is already in the chain's version.
    assert [(c.reason, c.current) for c in changes] == [("sync", V8)]
    assert state.current == V8 and state.last_height == 25 and state.pending == ()


def test_a_fresh_registry_ahead_of_its_first_snapshot_steps_back() -> None:
    state, _ = run([block(10), plan(20, V8), block(25)])
    outcome, _ = step(state, snap(V6, 12))
    assert outcome.stepped_back is not None and outcome.stepped_back.from_height == 25
    state = outcome.state
    assert state.current == V6 and state.last_height == 12 and pending(state) == [(20, V8)]
    state, changes = run(blocks(13, 20), state)
    assert [(c.height, c.current) for c in changes] == [(20, V8)]  # exactly at its height


def test_snapshot_height_covers_older_plans() -> None:
    state, changes = run([plan(20, V8), snap(V8, 30)])
    assert [(c.reason, c.current) for c in changes] == [("sync", V8)]
    assert state.pending == ()


def test_switch_happens_on_the_block_at_the_plans_height_not_before() -> None:
    state, changes = run([plan(100, V8), block(98), block(99)], synced())
    assert state.current == V6 and changes == []
    state, changes = run([block(100)], state)
    assert state.current == V8
    assert changes == [
        VersionChanged(transition_id="100-v3.0.8", previous=V6, current=V8, height=100, reason="plan")
    ]


def test_several_due_plans_apply_in_height_order_each_recorded() -> None:
    state, changes = run([plan(120, V10), plan(100, V8), plan(110, V9), block(130)], synced())
    assert [(c.height, c.current) for c in changes] == [(100, V8), (110, V9), (120, V10)]
    assert [(t.previous, t.current) for t in state.history[1:]] == [(V6, V8), (V8, V9), (V9, V10)]
    assert state.current == V10


def test_a_late_plan_waits_for_the_chain_to_confirm_its_height() -> None:
    state, changes = run([block(150), plan(100, V8)], synced())
    assert state.current == V6 and changes == [] and pending(state) == [(100, V8)]
    state, changes = run(blocks(151, 155), state)
    assert changes == []  # blocks do not apply a plan they did not reach
    state, changes = run([snap(V8, 155, {})], state)  # the chain passed 100: it is v3.0.8
    assert [(c.transition_id, c.reason) for c in changes] == [("100-v3.0.8", "plan")]
    assert state.pending == () and state.chain_height == 155


def test_a_late_plan_the_chain_does_not_confirm_changes_nothing() -> None:
    state, _ = run([block(150), plan(100, V8)], synced())
    state, changes = run([snap(V6, 150, {})], state)
    assert state.current == V6 and changes == [] and state.pending == ()


def test_a_late_plan_before_the_chain_reached_it_applies_on_its_block() -> None:
    state, _ = run([block(150), plan(120, V8)], synced())  # 150 was not the chain's
    outcome, _ = step(state, snap(V6, 110, {120: V8}))
    assert outcome.stepped_back is not None and outcome.changes == ()
    state, changes = run(blocks(111, 119), outcome.state)
    assert changes == []
    state, changes = run([block(120)], state)
    assert [(c.transition_id, c.height) for c in changes] == [("120-v3.0.8", 120)]


def test_a_plan_at_or_below_the_chains_height_is_already_in_its_version() -> None:
    state, changes = run([plan(80, V8)], synced(V6, 90))
    assert state.current == V6 and changes == [] and state.pending == ()


def test_a_second_plan_at_the_same_height_replaces_the_first() -> None:
    state, changes = run([plan(100, V8), plan(100, V9), block(100)], synced())
    assert state.current == V9 and [c.current for c in changes] == [V9]


def test_an_older_plan_redelivered_does_not_replace_a_newer_one() -> None:
    base = synced()
    first = base.chain_seq + 1
    state, _ = run([(plan(100, V8), first), (plan(100, V9), first + 1)], base)
    state, _ = run([(plan(100, V8), first)], state)  # the first message again, out of order
    assert pending(state) == [(100, V9)]


def test_replays_change_nothing() -> None:
    base = synced()
    commands: list[Command] = [plan(100, V8), block(100), block(100), plan(100, V8), block(99)]
    numbered: list[Item] = [(c, base.chain_seq + 1 + i) for i, c in enumerate(commands)]
    state, changes = run(numbered, base)
    assert len(changes) == 1
    again, more = run(numbered, state)
    assert again == state and more == []


def test_snapshot_sync_when_no_plan_explains_it() -> None:
    state, changes = run([block(150), snap(V9, 160)], synced())
    assert state.current == V9 and [(c.reason, c.transition_id) for c in changes] == [
        ("sync", "sync-160-v3.0.9")
    ]


def test_snapshot_explained_by_a_pending_plan_waits_for_the_block() -> None:
    state, changes = run([plan(200, V8), snap(V8)], synced())
    assert state.current == V6 and changes == []
    state, changes = run([block(200)], state)
    assert state.current == V8 and [c.reason for c in changes] == ["plan"]


def test_snapshot_with_a_height_applies_due_plans_first() -> None:
    state, changes = run([plan(100, V8), snap(V8, 100)], synced())
    assert [c.reason for c in changes] == ["plan"]  # the plan explains it: no extra sync
    assert state.last_height == 100


def test_a_redelivered_old_snapshot_changes_nothing() -> None:
    base = synced()
    old = base.chain_seq + 1
    state, _ = run([(snap(V6, 95, {100: V8}), old), plan(100, V8), block(100)], base)
    assert state.current == V8
    again, changes = run([(snap(V6, 95, {100: V8}), old)], state)  # older than block 100: not news
    assert again == state and changes == []


def test_rollback_holds_until_the_next_plan() -> None:
    state, _ = run([plan(100, V8), block(100)], synced())
    rollback = Rollback(rollback_id="r1", version=V6, actor="ops@example", reason="v3.0.8 crashes")
    state, changes = run([rollback], state)
    assert state.current == V6 and state.rollback_active
    assert changes[0].reason == "rollback" and state.history[-1].actor == "ops@example"
    state, changes = run([snap(V8, 120), block(130)], state)
    assert state.current == V6 and changes == []  # the chain still says v3.0.8; the override holds
    state, changes = run([plan(140, V9), block(140)], state)
    assert state.current == V9 and not state.rollback_active
    again, more = run([rollback], state)  # a replayed rollback is recognised
    assert again == state and more == []


def test_rollback_refusals() -> None:
    with pytest.raises(RollbackRefused, match="not synced"):
        apply(CoreState(), Rollback(rollback_id="a", version=V6, actor="x", reason="y"), NOW)
    with pytest.raises(RollbackRefused, match="already the current"):
        apply(synced(), Rollback(rollback_id="a", version=V6, actor="x", reason="y"), NOW)


def test_refreshed_sets_last_used_only_for_the_current_transition() -> None:
    state, _ = run([plan(100, V8), block(100), plan(110, V9), block(110)], synced())
    state, _ = run([BrokerRefreshed(transition_id="100-v3.0.8", version=V8)], state)
    assert state.last_used is None  # stale: 110 is current
    state, _ = run([BrokerRefreshed(transition_id="110-v3.0.9", version=V9)], state)
    assert state.last_used == V9 and not state.view().handoff_needed


# --- the chain corrects what it contradicts (issue 13) -------------------------------------------


def test_a_hand_typed_block_far_above_the_chain_is_stepped_back() -> None:
    state = run([snap(V6, 30, {})])[0]
    state, changes = run([block(10027), plan(62, V8)], state)  # typed by hand; then a real plan
    assert changes == [] and state.last_height == 10027 and pending(state) == [(62, V8)]
    state, _ = run(blocks(31, 32), state)  # the chain's own blocks: below the typed height
    outcome, _ = step(state, snap(V6, 32, {62: V8}))
    assert outcome.stepped_back is not None
    assert (outcome.stepped_back.from_height, outcome.stepped_back.to_height) == (10027, 32)
    state = outcome.state
    assert state.last_height == 32 and state.chain_height == 32 and pending(state) == [(62, V8)]
    state, changes = run(blocks(33, 61), state)
    assert changes == [] and state.current == V6  # not one block early
    state, changes = run([block(62)], state)
    assert [(c.transition_id, c.height, c.current) for c in changes] == [("62-v3.0.8", 62, V8)]
    assert state.ahead_of_chain_total == 1


def test_a_hand_typed_plan_and_block_at_that_height_are_undone_by_the_chain() -> None:
    # The case: {"height": 10027, "node_version": "v3.0.6"}, then block 10027, chain at ~30.
    state = run([snap(V8, 30, {})])[0]
    state, changes = run([plan(10027, V6), block(10027)], state)
    assert state.current == V6 and [c.height for c in changes] == [10027]
    state, changes = run([plan(62, V9), *blocks(31, 32)], state)  # a real plan for 62, chain at 32
    assert state.current == V6 and (62, V9) in pending(state)
    outcome, _ = step(state, snap(V8, 32, {62: V9}))
    state = outcome.state
    assert outcome.stepped_back is not None
    assert [(c.reason, c.current, c.height) for c in outcome.changes] == [("sync", V8, 32)]
    assert pending(state) == [(62, V9)]  # the typed plan is gone, the real one waits
    state, changes = run([*blocks(33, 51), snap(V10, 51, {62: V9})], state)
    assert [(c.reason, c.current) for c in changes] == [("sync", V10)]  # the chain's word at 51
    state, changes = run([*blocks(52, 62), snap(V9, 62, {})], state)
    assert [(c.transition_id, c.height) for c in changes] == [("62-v3.0.9", 62)]
    assert state.current == V9 and state.pending == ()


def test_a_hand_typed_chain_version_far_above_is_corrected_by_the_next_snapshot() -> None:
    state = run([snap(V6, 30, {})])[0]
    state, changes = run([snap(V9, 10027), plan(62, V8)], state)  # typed; then a real plan
    assert state.current == V9 and [c.reason for c in changes] == ["sync"]
    assert state.pending == ()  # at or below the typed height: held for the next snapshot, not applied
    outcome, _ = step(state, snap(V6, 31, {62: V8}))
    state = outcome.state
    assert outcome.stepped_back is not None and state.current == V6
    assert pending(state) == [(62, V8)] and state.chain_version == V6
    state, changes = run(blocks(32, 62), state)
    assert [(c.transition_id, c.height) for c in changes] == [("62-v3.0.8", 62)]


def test_without_a_plan_list_a_step_back_restores_plans_contradicted_blocks_consumed() -> None:
    state = run([snap(V6, 30), plan(62, V8), block(10027)])[0]
    assert state.current == V8  # applied by the typed block: cannot be told apart yet
    state, changes = run([snap(V6, 31)], state)
    assert [(c.reason, c.current) for c in changes] == [("sync", V6)]
    assert pending(state) == [(62, V8)]
    state, changes = run(blocks(32, 62), state)
    assert [(c.transition_id, c.height) for c in changes] == [("62-v3.0.8:3", 62)]  # a new id: announced anew


def test_a_forged_plan_the_chain_does_not_list_is_dropped() -> None:
    state = run([snap(V6, 30, {}), plan(40, V9)])[0]
    state, changes = run([block(31), snap(V6, 31, {})], state)
    assert state.pending == () and changes == []
    state, changes = run(blocks(32, 45), state)
    assert changes == [] and state.current == V6


def test_a_redelivered_forged_block_does_not_poison_again() -> None:
    base = run([snap(V6, 30, {62: V8})])[0]
    forged = base.chain_seq + 1
    state, _ = run([(block(10027), forged), block(31), snap(V6, 31, {62: V8})], base)
    assert state.last_height == 31
    again, changes = run([(block(10027), forged)], state)  # the same message, redelivered
    assert again == state and changes == []


def test_a_hand_typed_version_without_a_height_is_corrected_by_the_next_snapshot() -> None:
    state = run([snap(V6, 30, {})])[0]
    state, _ = run([snap(V9)], state)
    assert state.current == V9
    state, changes = run([block(31), snap(V6, 31, {})], state)
    assert state.current == V6 and [c.reason for c in changes] == ["sync"]


def test_an_operator_rollback_outlives_a_step_back() -> None:
    state = run([snap(V8, 30, {}), block(10027)])[0]
    rollback = Rollback(rollback_id="r1", version=V6, actor="ops", reason="drill")
    state, _ = run([rollback], state)
    state, changes = run([snap(V8, 31, {})], state)
    assert state.current == V6 and state.rollback_active and changes == []


def test_a_rollback_a_contradicted_block_ended_is_reinstated() -> None:
    state = run([snap(V8, 30, {62: V9})])[0]
    rollback = Rollback(rollback_id="r1", version=V6, actor="ops", reason="drill")
    state, _ = run([rollback, block(10027)], state)
    assert state.current == V9 and not state.rollback_active  # plan 62 ended it, early
    state, changes = run([snap(V8, 31, {62: V9})], state)
    assert state.current == V6 and state.rollback_active
    assert [(c.reason, c.current, c.transition_id.split(":")[0]) for c in changes] == [
        ("rollback", V6, "rollback-r1")
    ]
    assert pending(state) == [(62, V9)]
    state, changes = run(blocks(32, 62), state)  # the next plan ends it, at its height
    assert [(c.reason, c.height) for c in changes] == [("plan", 62)] and not state.rollback_active


def test_persisted_state_from_before_these_fields_still_loads() -> None:
    old = (
        '{"core": {"initialized": true, "current": "v3.0.6", "last_used": null, "current_transition":'
        ' "sync-5-v3.0.6", "current_height": 5, "last_height": 9, "pending": [{"height": 12,'
        ' "node_version": "v3.0.8", "name": ""}], "history": [{"transition_id": "sync-5-v3.0.6",'
        ' "previous": null, "current": "v3.0.6", "height": 5, "reason": "sync",'
        ' "at": "2026-11-23T12:00:00Z", "actor": "", "note": ""}], "rollback_active": false,'
        ' "seen_snapshots": ["5:v3.0.6"]}, "outbox": []}'
    )
    core = StoredState.model_validate_json(old).core
    assert core.chain_height == 0 and core.chain_seq == 0 and core.settled == ()
    assert core.view().pending == (PendingPlan(height=12, node_version=V8),)
    state, changes = run([block(12)], core)
    assert [c.transition_id for c in changes] == ["12-v3.0.8"]
    assert StoredState(core=state).model_dump_json()  # and it persists again


def test_periodic_snapshots_keep_the_state_bounded() -> None:
    state = run([snap(V6, 1, {})])[0]
    for height in range(2, 400):
        state, _ = run([block(height), snap(V6, height, {})], state)
    assert state.seen_snapshots == () and state.settled == () and len(state.history) == 1
    many = run([snap(V6, 1, {}), *(plan(h, V8) for h in range(10, 10 + MAX_SETTLED + 50)), block(5000)])[0]
    assert len(many.settled) == MAX_SETTLED


def test_a_re_created_stream_is_followed_again_after_forgetting_positions() -> None:
    state = run([snap(V6, 30, {})])[0]
    state = state.model_copy(update={"chain_seq": 10_000, "word_seq": 10_000})
    assert run([(snap(V8, 31, {}), 1)], state)[0].current == V6  # sequences from a new stream look old
    state = forget_stream_positions(state)
    assert run([(snap(V8, 31, {}), 1)], state)[0].current == V8


def test_view_shows_the_chains_word() -> None:
    view = run([snap(V6, 30, {}), block(31)])[0].view()
    assert (view.chain_height, view.chain_version, view.last_height) == (30, V6, 31)


# --- properties ----------------------------------------------------------------------------------

versions = st.sampled_from([V6, V8, V9, V10])
heights = st.integers(min_value=1, max_value=40)
plan_lists = st.one_of(st.none(), st.dictionaries(heights, versions, max_size=3))
commands = st.one_of(
    st.builds(BlockCommitted, height=st.one_of(heights, st.just(10_027))),
    st.builds(UpgradeScheduled, height=heights, node_version=versions),
    st.builds(snap, versions, st.one_of(st.none(), heights), plan_lists),
    st.builds(
        BrokerRefreshed, transition_id=st.sampled_from(["10-v3.0.8", "sync-5-v3.0.6"]), version=versions
    ),
    st.builds(
        Rollback,
        rollback_id=st.sampled_from(["r1", "r2"]),
        version=versions,
        actor=st.just("ops"),
        reason=st.just("test"),
    ),
)


def numbered(seq: Sequence[Command]) -> list[tuple[Command, int | None]]:
    """Stream sequences as the CHAIN stream would assign them; None for the others."""
    out: list[tuple[Command, int | None]] = []
    n = 0
    for command in seq:
        if isinstance(command, CHAIN_COMMANDS):
            n += 1
            out.append((command, n))
        else:
            out.append((command, None))
    return out


def run_lenient(seq: Sequence[tuple[Command, int | None]], state: CoreState) -> CoreState:
    for command, n in seq:
        with contextlib.suppress(RollbackRefused):
            state = apply(state, command, NOW, n).state
    return state


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=30))
@example(  # found by hypothesis: a refreshed before its switch, replayed after it
    seq=[
        UpgradeScheduled(height=10, node_version=V8),
        snap(V6),
        BrokerRefreshed(transition_id="10-v3.0.8", version=V8),
        BlockCommitted(height=10027),
    ]
)
def test_any_sequence_replayed_gives_the_same_state(seq: list[Command]) -> None:
    """Redelivering every bus event (and every accepted rollback, by its id) changes nothing.

    Not redelivered: a `broker.refreshed` that came before its switch was made. The real broker
    cannot send one (it answers the registry's own `version.changed`); a forged one is ignored,
    and replayed after the switch it would rightly count.
    """
    items = numbered(seq)
    state, early = CoreState(), set()
    for i, (command, n) in enumerate(items):
        if isinstance(command, BrokerRefreshed) and command.transition_id not in {
            *(t.transition_id for t in state.history),
            state.current_transition,
        }:
            early.add(i)
        with contextlib.suppress(RollbackRefused):
            state = apply(state, command, NOW, n).state
    once = state
    accepted = {t.transition_id for t in once.history}
    replay = [
        (c, n)
        for i, (c, n) in enumerate(items)
        if i not in early and (not isinstance(c, Rollback) or f"rollback-{c.rollback_id}" in accepted)
    ]
    assert run_lenient(replay, once) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=25))
def test_a_redelivery_at_any_point_changes_nothing(seq: list[Command]) -> None:
    """JetStream is at-least-once: any earlier chain message may come again, at any moment."""
    state = CoreState()
    delivered: list[tuple[Command, int]] = []
    for command, n in numbered(seq):
        for old, old_n in delivered:
            assert apply(state, old, NOW, old_n).state == state
        with contextlib.suppress(RollbackRefused):
            state = apply(state, command, NOW, n).state
        if n is not None:
            delivered.append((command, n))


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=30))
def test_history_never_loses_an_entry_and_ids_are_unique(seq: list[Command]) -> None:
    state = CoreState()
    for command, n in numbered(seq):
        try:
            outcome = apply(state, command, NOW, n)
        except RollbackRefused:
            continue
        new = outcome.state
        assert new.history[: len(state.history)] == state.history
        assert [c.transition_id for c in outcome.changes] == [
            t.transition_id for t in new.history[len(state.history) :]
        ]
        if new.history:
            assert new.history[-1].current == new.current
        state = new
    ids = [t.transition_id for t in state.history]
    assert len(ids) == len(set(ids))  # each switch is its own version.changed (the outbox relies on it)


@settings(max_examples=300, deadline=None)
@given(
    start=versions,
    plans=st.dictionaries(heights, versions, max_size=6),
    blocks_seen=st.lists(heights, max_size=12),
)
def test_current_is_the_highest_plan_at_or_below_the_last_height(
    start: MLNodeVersion, plans: dict[int, MLNodeVersion], blocks_seen: list[int]
) -> None:
    """In any arrival order of plans and blocks; plans that arrive late wait for the chain's word."""
    seq: list[Command] = [*(plan(h, v) for h, v in plans.items()), *(block(h) for h in blocks_seen)]
    state, _ = run([snap(start), *seq])
    due = [h for h in plans if h <= state.last_height]
    expected = plans[max(due)] if due else start
    assert state.current == expected
    for order in (seq, list(reversed(seq))):
        state, _ = run([snap(start), *order])
        # Whatever arrived late, the chain's snapshot at the last height settles it.
        state, _ = run([snap(expected, state.last_height or None, {})], state)
        assert state.current == expected
        assert all(p.height > state.last_height for p in state.pending)


# --- a simulated chain: the chain-watcher's ordered stream, with hand-typed events mixed in --------


@dataclass
class Chain:
    """The chain's end-block rules (mock_chain): plans stored by height; applied at exactly it."""

    version: MLNodeVersion
    height: int = 0
    stored: dict[int, MLNodeVersion] = field(default_factory=dict)

    def advance(self, proposals: dict[int, MLNodeVersion]) -> None:
        self.height += 1
        self.stored.update(proposals)
        if self.height in self.stored:
            self.version = self.stored[self.height]
        self.stored = {h: v for h, v in self.stored.items() if h >= self.height}

    def snapshot(self) -> ChainVersionObserved:
        return snap(self.version, self.height, {h: v for h, v in self.stored.items() if h > self.height})


proposals = st.lists(
    st.tuples(st.integers(1, 50), st.integers(1, 12), versions), max_size=6
)  # (voting ends at, blocks ahead, version)


def genuine_stream(
    genesis: MLNodeVersion,
    votes: list[tuple[int, int, MLNodeVersion]],
    snapshot_every: int,
    last: int = 60,
) -> list[tuple[Command, int]]:
    """What the chain-watcher publishes, in order: plans observed at h, block h, snapshot at h."""
    chain = Chain(genesis)
    out: list[tuple[Command, int]] = []
    for _ in range(last):
        stored_at = {end + ahead: v for end, ahead, v in votes if end == chain.height + 1}
        before = dict(chain.stored)
        chain.advance(stored_at)
        for h, v in sorted(chain.stored.items()):
            if before.get(h) != v:
                out.append((plan(h, v), chain.height))
        out.append((block(chain.height), chain.height))
        if chain.height == 1 or chain.height % snapshot_every == 0 or chain.height == last:
            out.append((chain.snapshot(), chain.height))
    return out


def chain_versions(
    genesis: MLNodeVersion, votes: list[tuple[int, int, MLNodeVersion]]
) -> dict[int, MLNodeVersion]:
    chain, at = Chain(genesis), {}
    for _ in range(60):
        chain.advance({end + ahead: v for end, ahead, v in votes if end == chain.height + 1})
        at[chain.height] = chain.version
    return at


@settings(max_examples=200, deadline=None)
@given(genesis=versions, votes=proposals, every=st.integers(1, 12))
def test_the_chain_watchers_ordered_stream_switches_exactly_and_never_flaps(
    genesis: MLNodeVersion, votes: list[tuple[int, int, MLNodeVersion]], every: int
) -> None:
    truth = chain_versions(genesis, votes)
    state = CoreState()
    for n, (command, chain_height) in enumerate(genuine_stream(genesis, votes, every), start=1):
        outcome = apply(state, command, NOW, n)
        assert outcome.stepped_back is None
        state = outcome.state
        if isinstance(command, BlockCommitted | ChainVersionObserved) and state.initialized:
            assert state.current == truth[chain_height]  # after the block, and at its snapshot
    assert [t.reason for t in state.history].count("sync") == 1  # only the start: no correction needed
    assert all(t.reason == "plan" for t in state.history[1:])


forged = st.one_of(
    st.builds(BlockCommitted, height=st.integers(1, 20_000)),
    st.builds(UpgradeScheduled, height=st.integers(1, 20_000), node_version=versions),
    st.builds(snap, versions, st.one_of(st.none(), st.integers(1, 20_000))),
)


@settings(max_examples=300, deadline=None)
@given(
    genesis=versions,
    votes=proposals,
    every=st.integers(1, 10),
    typed=st.lists(st.tuples(st.integers(0, 200), forged), min_size=1, max_size=6),
)
def test_hand_typed_events_are_corrected_by_the_chains_next_snapshot(
    genesis: MLNodeVersion,
    votes: list[tuple[int, int, MLNodeVersion]],
    every: int,
    typed: list[tuple[int, Command]],
) -> None:
    """Anything typed by hand is undone by the next genuine snapshot, and no genuine event ever
    applies a plan before the chain reached its height."""
    truth = chain_versions(genesis, votes)
    stream: list[tuple[Command, int, bool]] = [(c, h, True) for c, h in genuine_stream(genesis, votes, every)]
    for position, command in sorted(typed, key=lambda t: -t[0]):
        at = min(position, len(stream) - 1)  # the last snapshot comes after them all
        height = stream[at - 1][1] if at else 0
        stream.insert(at, (command, height, False))
    last_typed = max(i for i, (_, _, genuine) in enumerate(stream) if not genuine)
    corrected = False
    state = CoreState()
    for n, (command, chain_height, genuine) in enumerate(stream, start=1):
        outcome = apply(state, command, NOW, n)
        state = outcome.state
        if genuine:
            for change in outcome.changes:
                if change.reason == "plan":
                    assert change.height <= chain_height, "a plan applied before its height"
        if n - 1 > last_typed and genuine and isinstance(command, ChainVersionObserved):
            corrected = True
        if corrected and isinstance(command, BlockCommitted | ChainVersionObserved):
            assert state.current == truth[chain_height]
            assert state.last_height == chain_height
    assert corrected


def timed(h: int, seconds_after: float) -> BlockCommitted:
    return BlockCommitted(height=h, time=datetime.fromtimestamp(NOW.timestamp() + seconds_after, UTC))


def test_the_recent_block_time_is_measured_from_the_blocks_times() -> None:
    state, _ = run([timed(91, 0.0), block(92), timed(93, 12.0), timed(95, 24.0)], synced())
    assert state.block_time_s == 6.0 and state.view().block_time_s == 6.0
    assert CoreState().block_time_s is None and run([timed(91, 0.0)], synced())[0].block_time_s is None


def test_the_block_time_window_is_bounded_and_forgets_blocks_a_snapshot_took_back() -> None:
    state, _ = run([timed(h, 5.0 * (h - 91)) for h in range(91, 91 + 3 * BLOCK_TIMES)], synced())
    assert len(state.block_times) == BLOCK_TIMES and state.block_time_s == 5.0
    top = state.last_height
    state, _ = run([snap(V6, top - 5)], state)  # the registry was ahead: those blocks never were
    assert all(h <= top - 5 for h, _ in state.block_times)


# --- a bounded history (HISTORY_KEPT) with every switch counted (transitions_total) --------------


def alternating(state: CoreState, count: int, first: int = 100) -> tuple[CoreState, list[VersionChanged]]:
    """`count` switches: plans alternating v3.0.8 and v3.0.6 at `first`, `first + 1`, ..., on their blocks."""
    changes: list[VersionChanged] = []
    for i in range(count):
        state, made = run([plan(first + i, V8 if i % 2 == 0 else V6), block(first + i)], state)
        assert len(made) == 1
        changes += made
    return state, changes


def test_the_history_keeps_the_newest_switches_and_counts_them_all() -> None:
    start = synced()  # the first snapshot is a switch too: sync-90-v3.0.6
    assert start.transitions_total == 1 and len(start.history) == 1
    state, changes = alternating(start, 100)
    assert len(state.history) == HISTORY_KEPT
    assert state.transitions_total == 101  # the sync and the 100 plans
    assert [t.transition_id for t in state.history] == [c.transition_id for c in changes][-HISTORY_KEPT:]
    assert state.history[0].transition_id == f"{100 + 100 - HISTORY_KEPT}-v3.0.8"
    assert state.history[-1].transition_id == "199-v3.0.6" and state.history[-1].current == state.current
    assert StoredState(core=state).model_dump_json()  # and it persists


def test_an_id_reused_after_a_step_back_is_suffixed_with_the_count_once_the_history_is_trimmed() -> None:
    state, changes = alternating(synced(), 100)
    outcome, _ = step(state, snap(V8, 198))  # the chain never had block 199: its plan comes back
    assert outcome.stepped_back is not None
    # Below the highest height switched at, with older switches trimmed away: suffixed.
    assert [c.transition_id for c in outcome.changes] == ["sync-198-v3.0.8:101"]
    state, again = run([block(199)], outcome.state)
    # len(history) stays at HISTORY_KEPT; the suffix counts every switch, so it is new.
    assert [c.transition_id for c in again] == ["199-v3.0.6:102"]
    assert state.transitions_total == 103 and len(state.history) == HISTORY_KEPT
    ids = [c.transition_id for c in (*changes, *outcome.changes, *again)]
    assert len(ids) == len(set(ids))
    # Step back and replay once more: the next suffix is new again (not a second ":64").
    outcome, _ = step(state, snap(V8, 198))
    state, third = run([block(199)], outcome.state)
    assert [c.transition_id for c in (*outcome.changes, *third)] == ["sync-198-v3.0.8:103", "199-v3.0.6:104"]
    ids += [c.transition_id for c in (*outcome.changes, *third)]
    assert len(ids) == len(set(ids)) and state.transitions_total == 105


def test_ids_stay_unique_after_a_step_back_deeper_than_the_kept_history() -> None:
    state, changes = alternating(synced(), 100)
    outcome, _ = step(state, snap(V8, 120))  # undoes the 79 switches at 121..199
    assert outcome.stepped_back is not None
    state, again = run(blocks(121, 199), outcome.state)
    assert len(again) == 79 and state.current == V6
    ids = [c.transition_id for c in (*changes, *outcome.changes, *again)]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})[:5]


def test_a_state_written_before_the_count_existed_still_gets_unique_ids() -> None:
    state = run([plan(100, V8), block(100), plan(101, V9), block(101)], synced())[0]
    state = run([snap(V8, 100)], state)[0]  # block 101 undone: plan 101 pending again
    assert [t.transition_id for t in state.history] == [
        "sync-90-v3.0.6",
        "100-v3.0.8",
        "101-v3.0.9",
        "sync-100-v3.0.8",
    ]
    # As written before `transitions_total`: the field is absent and reads as 0.
    dumped = StoredState(core=state).model_dump(mode="json")
    del dumped["core"]["transitions_total"]
    old = StoredState.model_validate(dumped).core
    assert old.transitions_total == 0 and old.history == state.history
    new, changes = run([block(101)], old)
    (reused,) = [c.transition_id for c in changes]
    base, _, suffix = reused.partition(":")
    assert base == "101-v3.0.9" and int(suffix) >= len(old.history)
    ids = [t.transition_id for t in new.history]
    assert len(ids) == len(set(ids)) and new.transitions_total == len(new.history) == 5
