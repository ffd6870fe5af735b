"""The chain-watcher's height rule: a height is published once the query node serves it, frames are
hints, and a `chain.version` snapshot is the chain's word at exactly the newest published height."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.chain_watcher.core import (
    BlockRefusal,
    NextHeight,
    ObservedBlock,
    ObservedPlan,
    Refusal,
    WatcherState,
    classify_block_refusal,
    decide,
    frame_disagrees,
    is_future_state_error,
    plan_next,
    snapshot_plans,
)
from services.chain_watcher.settings import ChainWatcherSettings
from shared.events import MAX_SNAPSHOT_PLANS, BlockCommitted, ChainPlan, ChainVersionObserved

FUTURE = (
    "GET http://n:26657/block: Internal error: "
    "height 22 must be less than or equal to the current blockchain height 15"
)
PRUNED = "GET http://n:26657/block: Internal error: height 3 is not available, lowest height is 10"


def real_hash(height: int) -> str:
    return hashlib.sha256(str(height).encode()).hexdigest().upper()


# -- which height next ----------------------------------------------------------------------


def test_the_first_run_starts_where_the_query_node_is_not_where_a_frame_claims() -> None:
    assert plan_next(None, 15, 22, max_backfill=100) == NextHeight(15)
    assert plan_next(None, None, 22, max_backfill=100) is None  # wait for /status


def test_a_frame_ahead_of_the_query_node_only_asks_for_the_next_height() -> None:
    assert plan_next(15, 15, 22, max_backfill=100) == NextHeight(16, confirmed=False)
    assert plan_next(15, 15, 10**12, max_backfill=100) == NextHeight(16, confirmed=False)


def test_a_forged_far_frame_never_makes_the_watcher_skip() -> None:
    step = plan_next(10, 12, 10**9, max_backfill=5)
    assert step == NextHeight(11)


def test_served_heights_follow_the_cursor_and_jump_only_on_what_is_served() -> None:
    assert plan_next(10, 15, None, max_backfill=100) == NextHeight(11)
    assert plan_next(10, 2_000, None, max_backfill=1_000) == NextHeight(1_001, skipped=990)
    assert plan_next(15, 15, 15, max_backfill=100) is None
    assert plan_next(15, 12, 14, max_backfill=100) is None  # a chain below the cursor: wait


# -- what a refusal of /block means ---------------------------------------------------------


def test_a_height_in_the_future_means_wait_with_the_nodes_height() -> None:
    assert classify_block_refusal(22, FUTURE, earliest=1) == BlockRefusal(Refusal.FUTURE, node_height=15)
    # Never pruned, even if the earliest block were somehow above it.
    assert classify_block_refusal(22, FUTURE, earliest=100).kind is Refusal.FUTURE


def test_only_a_height_below_the_earliest_block_is_pruned() -> None:
    assert classify_block_refusal(3, PRUNED, earliest=None).kind is Refusal.PRUNED
    assert (
        classify_block_refusal(3, "GET /block: Internal error: something", earliest=10).kind is Refusal.PRUNED
    )


@pytest.mark.parametrize(
    "message",
    ["GET /block: Internal error: height must be greater than 0, but got 0", "GET /block: Internal error: x"],
)
def test_any_other_refusal_is_a_failure_not_a_pruned_block(message: str) -> None:
    assert classify_block_refusal(16, message, earliest=1).kind is Refusal.OTHER
    assert classify_block_refusal(16, message, earliest=None).kind is Refusal.OTHER


def test_a_query_pinned_above_the_node_is_recognised() -> None:
    sdk = (
        "gRPC n:9090 MLNodeVersion at height 22: INVALID_ARGUMENT cannot query with height in the future;"
        " please provide a valid height"
    )
    assert is_future_state_error(sdk)
    assert not is_future_state_error("failed to load state at height 3; version does not exist")


def test_a_frame_with_another_hash_disagrees() -> None:
    served = ObservedBlock(5, real_hash(5))
    assert frame_disagrees(ObservedBlock(5, "00" * 32), served)
    assert not frame_disagrees(ObservedBlock(5, real_hash(5).lower()), served)
    assert not frame_disagrees(ObservedBlock(5), served) and not frame_disagrees(None, served)


# -- snapshots ------------------------------------------------------------------------------


def test_a_snapshot_lists_the_mlnode_plans_stored_above_its_height() -> None:
    plans = [
        ObservedPlan(10, "v3.0.9", "at ten"),
        ObservedPlan(12, "v3.0.10", "n" * 600),
        ObservedPlan(11, ""),  # API binaries only
        ObservedPlan(13, "bad/version"),
        ObservedPlan(9, "v3.0.9"),
    ]
    assert snapshot_plans(plans, 10) == (
        ChainPlan(height=12, node_version="v3.0.10", name="n" * 512),  # type: ignore[arg-type]
    )
    assert snapshot_plans([], 10) == ()


def test_too_many_plans_for_one_snapshot_are_not_listed_at_all() -> None:
    plans = [ObservedPlan(100 + i, "v3.0.9") for i in range(MAX_SNAPSHOT_PLANS + 1)]
    assert snapshot_plans(plans, 1) is None
    assert snapshot_plans(plans[:-1], 1) is not None


def test_the_periodic_snapshot_is_at_the_cursor_with_plans_above_it() -> None:
    state = WatcherState(last_height=20, chain_version="v3.0.8")
    plans = [ObservedPlan(20, "v3.0.8"), ObservedPlan(30, "v3.0.9", "p")]
    step = decide(state, [], plans, "v3.0.8", observed_at=20, announce_version=True)
    assert step.version == ChainVersionObserved(
        current_version="v3.0.8",  # type: ignore[arg-type]
        height=20,
        plans=(ChainPlan(height=30, node_version="v3.0.9", name="p"),),  # type: ignore[arg-type]
    )
    assert step.publishes[-1].msg_id == "chain-version-20-v3.0.8"


def test_a_snapshot_with_a_block_comes_after_it_at_its_height() -> None:
    step = decide(
        WatcherState(last_height=20, chain_version="v3.0.8"),
        [ObservedBlock(21, real_hash(21))],
        [],
        "v3.0.8",
        observed_at=21,
        announce_version=True,
    )
    assert [type(o.event) for o in step.publishes] == [BlockCommitted, ChainVersionObserved]
    assert step.version is not None and step.version.height == 21


def test_no_snapshot_from_state_read_at_another_height_than_the_cursor() -> None:
    state = WatcherState(last_height=20, chain_version="v3.0.8")
    stale = decide(state, [], [], "v3.0.9", observed_at=18, announce_version=True)
    assert stale.version is None and stale.state.chain_version == "v3.0.8"  # a change is kept for later
    first_run = decide(WatcherState(), [], [], "v3.0.9", observed_at=5, announce_version=True)
    assert first_run.version is None and first_run.state.chain_version is None


def test_the_snapshot_interval_is_validated_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ChainWatcherSettings().version_snapshot_interval_s == 10.0
    monkeypatch.setenv("CHAIN_WATCHER_VERSION_SNAPSHOT_INTERVAL_S", "2.5")
    assert ChainWatcherSettings().version_snapshot_interval_s == 2.5
    for bad in (0, -1, 100_000):
        with pytest.raises(ValueError, match="version_snapshot_interval_s"):
            ChainWatcherSettings(version_snapshot_interval_s=bad)


# -- the rule as a whole, against a lagging node and forged frames --------------------------

_actions = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(1, 3)),
        st.tuples(st.just("lag"), st.integers(0, 6)),
        st.tuples(st.just("frame"), st.integers(-2, 2)),  # relative to the chain: true or forged ahead
        st.tuples(st.just("forge"), st.integers(1, 10**6)),
        st.tuples(st.just("status"), st.just(0)),
        st.tuples(st.just("step"), st.booleans()),  # the bool: a snapshot is due
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_actions)
def test_published_heights_are_served_gap_free_with_real_hashes_and_snapshots_at_the_cursor(
    actions: list[tuple[str, int]],
) -> None:
    chain, lag = 3, 0
    state = WatcherState()
    served: int | None = None
    claimed: int | None = None
    published: list[BlockCommitted | ChainVersionObserved] = []
    for action, arg in actions:
        node = max(0, chain - lag)  # what the query node serves right now
        if action == "advance":
            chain += arg
        elif action == "lag":
            lag = arg
        elif action == "frame":
            claimed = max(claimed or 0, max(1, chain + arg))
        elif action == "forge":
            claimed = max(claimed or 0, chain + arg)
        elif action == "status" and node > 0:
            served = max(served or 0, node)
        elif action == "step":
            nxt = plan_next(state.last_height, served, claimed, max_backfill=10_000)
            if nxt is None:
                if state.last_height is None or not arg:
                    continue
                at, blocks = state.last_height, []
            else:
                if nxt.height > node:
                    message = (
                        f"height {nxt.height} must be less than or equal to the current blockchain height"
                    )
                    message += f" {node}"
                    refusal = classify_block_refusal(nxt.height, message, earliest=1)
                    assert refusal.kind is Refusal.FUTURE
                    served = max(served or 0, refusal.node_height or 0) or None
                    continue
                served = max(served or 0, nxt.height)
                at, blocks = nxt.height, [ObservedBlock(nxt.height, real_hash(nxt.height))]
            step = decide(state, blocks, [], "v3.0.8", observed_at=at, announce_version=bool(arg))
            for out in step.publishes:
                assert isinstance(out.event, BlockCommitted | ChainVersionObserved)
                if isinstance(out.event, BlockCommitted):
                    assert out.event.height <= node <= chain  # served when published
                published.append(out.event)
            state = step.state
    heights = [e.height for e in published if isinstance(e, BlockCommitted)]
    assert heights == list(range(heights[0], heights[0] + len(heights))) if heights else True
    assert all(e.hash == real_hash(e.height) for e in published if isinstance(e, BlockCommitted))
    newest = 0
    for event in published:
        if isinstance(event, BlockCommitted):
            newest = event.height
        else:
            assert event.height == newest  # after its block, before the next, never lower
