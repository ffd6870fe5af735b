"""The registry's decisions, without NATS: examples for each rule, then properties over any sequence."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.version_registry.core import Command, CoreState, Rollback, RollbackRefused, apply
from shared.events import (
    BlockCommitted,
    BrokerRefreshed,
    ChainVersionObserved,
    UpgradeScheduled,
    VersionChanged,
)
from shared.versions import MLNodeVersion

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
V6, V8, V9, V10 = (MLNodeVersion(v) for v in ("v3.0.6", "v3.0.8", "v3.0.9", "v3.0.10"))


def run(
    commands: Sequence[Command], state: CoreState | None = None
) -> tuple[CoreState, list[VersionChanged]]:
    state = state or CoreState()
    changes: list[VersionChanged] = []
    for command in commands:
        outcome = apply(state, command, NOW)
        state = outcome.state
        changes += outcome.changes
    return state, changes


def synced(version: MLNodeVersion = V6, height: int = 90) -> CoreState:
    return run([ChainVersionObserved(current_version=version, height=height)])[0]


def block(h: int) -> BlockCommitted:
    return BlockCommitted(height=h)


def plan(h: int, v: MLNodeVersion) -> UpgradeScheduled:
    return UpgradeScheduled(height=h, node_version=v)


def test_fresh_registry_waits_for_the_chain_snapshot() -> None:
    state, changes = run([block(10), plan(20, V8), block(25)])
    assert state.current is None and not state.initialized and changes == []
    state, changes = run([ChainVersionObserved(current_version=V6, height=12)], state)
    # Starts from the snapshot, then the plan at 20 (<= 25, above the snapshot) applies.
    assert [(c.reason, c.current) for c in changes] == [("sync", V6), ("plan", V8)]
    assert state.current == V8 and state.last_height == 25


def test_snapshot_height_covers_older_plans() -> None:
    state, changes = run([plan(20, V8), ChainVersionObserved(current_version=V8, height=30)])
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


def test_a_late_plan_applies_at_once_unless_superseded() -> None:
    state, changes = run([block(150), plan(100, V8)], synced())
    assert state.current == V8 and [c.height for c in changes] == [100]
    state, changes = run([plan(120, V9), plan(110, V10)], state)  # 110 is older than the 120 switch
    assert state.current == V9 and [c.current for c in changes] == [V9]


def test_a_second_plan_at_the_same_height_replaces_the_first() -> None:
    state, changes = run([plan(100, V8), plan(100, V9), block(100)], synced())
    assert state.current == V9 and [c.current for c in changes] == [V9]


def test_replays_change_nothing() -> None:
    commands = [plan(100, V8), block(100), block(100), plan(100, V8), block(99)]
    state, changes = run(commands, synced())
    assert len(changes) == 1
    again, more = run(commands, state)
    assert again == state and more == []


def test_snapshot_sync_when_no_plan_explains_it() -> None:
    state, changes = run([block(150), ChainVersionObserved(current_version=V9, height=160)], synced())
    assert state.current == V9 and [(c.reason, c.transition_id) for c in changes] == [
        ("sync", "sync-160-v3.0.9")
    ]


def test_snapshot_explained_by_a_pending_plan_waits_for_the_block() -> None:
    state, changes = run([plan(200, V8), ChainVersionObserved(current_version=V8)], synced())
    assert state.current == V6 and changes == []
    state, changes = run([block(200)], state)
    assert state.current == V8 and [c.reason for c in changes] == ["plan"]


def test_snapshot_with_a_height_applies_due_plans_first() -> None:
    state, changes = run([plan(100, V8), ChainVersionObserved(current_version=V8, height=100)], synced())
    assert [c.reason for c in changes] == ["plan"]  # the plan explains it: no extra sync
    assert state.last_height == 100


def test_stale_snapshot_does_not_revert_a_newer_switch() -> None:
    state, _ = run([plan(100, V8), block(100)], synced())
    state, changes = run([ChainVersionObserved(current_version=V6, height=95)], state)
    assert state.current == V8 and changes == []


def test_rollback_holds_until_the_next_plan() -> None:
    state, _ = run([plan(100, V8), block(100)], synced())
    rollback = Rollback(rollback_id="r1", version=V6, actor="ops@example", reason="v3.0.8 crashes")
    state, changes = run([rollback], state)
    assert state.current == V6 and state.rollback_active
    assert changes[0].reason == "rollback" and state.history[-1].actor == "ops@example"
    state, changes = run([ChainVersionObserved(current_version=V8, height=120), block(130)], state)
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


# --- properties ----------------------------------------------------------------------------------

versions = st.sampled_from([V6, V8, V9, V10])
heights = st.integers(min_value=1, max_value=40)
commands = st.one_of(
    st.builds(BlockCommitted, height=heights),
    st.builds(UpgradeScheduled, height=heights, node_version=versions),
    st.builds(ChainVersionObserved, current_version=versions, height=st.one_of(st.none(), heights)),
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


def run_lenient(seq: Sequence[Command], state: CoreState) -> CoreState:
    for command in seq:
        with contextlib.suppress(RollbackRefused):
            state = apply(state, command, NOW).state
    return state


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=30))
def test_any_sequence_replayed_gives_the_same_state(seq: list[Command]) -> None:
    """Redelivering every bus event (and every accepted rollback, by its id) changes nothing."""
    once = run_lenient(seq, CoreState())
    accepted = {t.transition_id for t in once.history}
    replay = [c for c in seq if not isinstance(c, Rollback) or f"rollback-{c.rollback_id}" in accepted]
    assert run_lenient(replay, once) == once


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=30))
def test_history_never_loses_an_entry(seq: list[Command]) -> None:
    state = CoreState()
    for command in seq:
        try:
            new = apply(state, command, NOW).state
        except RollbackRefused:
            continue
        assert new.history[: len(state.history)] == state.history
        if new.history:
            assert new.history[-1].current == new.current
        state = new


@settings(max_examples=300, deadline=None)
@given(
    start=versions,
    plans=st.dictionaries(heights, versions, max_size=6),
    blocks=st.lists(heights, max_size=12),
)
def test_current_is_the_highest_plan_at_or_below_the_last_height(
    start: MLNodeVersion, plans: dict[int, MLNodeVersion], blocks: list[int]
) -> None:
    """Without later snapshots or rollbacks, in any arrival order of plans and blocks."""
    seq: list[Command] = [plan(h, v) for h, v in plans.items()] + [block(h) for h in blocks]
    for order in (seq, list(reversed(seq))):
        state, _ = run([ChainVersionObserved(current_version=start), *order])
        due = [h for h in plans if h <= state.last_height]
        expected = plans[max(due)] if due else start
        if order is not seq and due:
            # Plans that arrive after a newer switch are superseded, never applied backwards.
            assert state.current in {plans[h] for h in due}
        else:
            assert state.current == expected
