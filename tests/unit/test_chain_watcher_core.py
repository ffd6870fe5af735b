"""The chain-watcher's decisions: gap-free blocks, one announcement per plan, version changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.chain_watcher.core import (
    CorruptState,
    KnownPlan,
    ObservedBlock,
    ObservedPlan,
    WatcherState,
    backoff_delay,
    decide,
    lag_blocks,
    next_height,
)
from services.chain_watcher.settings import ChainWatcherSettings
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled

HASH = "AB" * 32


def plan(height: int, version: str = "v3.0.9", **kw: str) -> ObservedPlan:
    return ObservedPlan(
        height=height,
        node_version=version,
        name=kw.get("name", f"p{height}"),
        api_binaries_json=kw.get("api_binaries_json", ""),
    )


# -- blocks ---------------------------------------------------------------------------------


def test_first_run_starts_at_the_current_height() -> None:
    assert next_height(None, 500, max_backfill=1000) == (500, 0)


def test_every_height_after_the_cursor_one_at_a_time() -> None:
    assert next_height(10, 15, max_backfill=1000) == (11, 0)
    assert next_height(14, 15, max_backfill=1000) == (15, 0)


def test_nothing_when_the_event_is_old_or_repeated() -> None:
    assert next_height(10, 10, max_backfill=1000) == (None, 0)
    assert next_height(10, 7, max_backfill=1000) == (None, 0)
    assert next_height(None, 0, max_backfill=1000) == (None, 0)


def test_too_far_behind_jumps_and_reports_the_skipped_count() -> None:
    assert next_height(10, 2_000, max_backfill=1_000) == (1_001, 990)
    assert next_height(10, 1_010, max_backfill=1_000) == (11, 0)


def test_decide_publishes_blocks_in_order_and_advances_the_cursor() -> None:
    state = WatcherState(last_height=4)
    blocks = [ObservedBlock(6, HASH), ObservedBlock(5), ObservedBlock(4), ObservedBlock(7)]
    step = decide(state, blocks, None, None, observed_at=7)
    assert [b.height for b in step.blocks] == [5, 6, 7]
    assert [o.msg_id for o in step.publishes] == ["block-5", f"block-6-{HASH[:16].upper()}", "block-7"]
    assert step.blocks[1].hash == HASH
    assert step.state.last_height == 7


def test_an_unusable_hash_is_dropped_not_the_block() -> None:
    step = decide(WatcherState(last_height=1), [ObservedBlock(2, "not-a-hash")], None, None, observed_at=2)
    assert step.blocks == (BlockCommitted(height=2),)


# -- plans ----------------------------------------------------------------------------------


def test_each_new_plan_is_announced_once() -> None:
    first = decide(
        WatcherState(last_height=1),
        [ObservedBlock(2)],
        [plan(100), plan(200, "v3.0.10")],
        None,
        observed_at=2,
    )
    assert [(p.height, str(p.node_version)) for p in first.plans] == [(100, "v3.0.9"), (200, "v3.0.10")]
    assert [o.msg_id for o in first.publishes[:2]] == ["plan-100-v3.0.9", "plan-200-v3.0.10"]
    again = decide(first.state, [ObservedBlock(3)], [plan(100), plan(200, "v3.0.10")], None, observed_at=3)
    assert again.plans == ()


def test_plans_are_published_before_the_blocks_of_the_same_step() -> None:
    step = decide(WatcherState(last_height=1), [ObservedBlock(2)], [plan(2)], "v3.0.8", observed_at=2)
    kinds = [type(o.event) for o in step.publishes]
    assert kinds == [UpgradeScheduled, BlockCommitted, ChainVersionObserved]


@pytest.mark.parametrize(
    "changed",
    [plan(100, "v3.0.10"), plan(100, name="renamed"), plan(100, api_binaries_json='{"api_binaries":{}}')],
)
def test_a_changed_plan_is_announced_again_with_a_new_id(changed: ObservedPlan) -> None:
    first = decide(WatcherState(), [], [plan(100)], None, observed_at=1)
    second = decide(first.state, [], [changed], None, observed_at=2)
    assert len(second.plans) == 1
    assert second.publishes[0].msg_id != first.publishes[0].msg_id
    assert second.state.plans[100].announcements == 2


def test_flip_flopping_plan_never_reuses_an_id() -> None:
    state = WatcherState()
    ids = []
    for version in ["v3.0.9", "v3.0.10", "v3.0.9", "v3.0.10"]:
        step = decide(state, [], [plan(100, version)], None, observed_at=1)
        ids.append(step.publishes[0].msg_id)
        state = step.state
    assert len(set(ids)) == 4


def test_a_retry_after_a_crash_reuses_the_same_ids() -> None:
    """Publish, crash before the cursor write, decide again from the old state: same ids."""
    state = decide(WatcherState(), [], [plan(100)], None, observed_at=1).state
    one = decide(state, [ObservedBlock(5)], [plan(100, "v3.0.10")], "v3.0.9", observed_at=5)
    two = decide(state, [ObservedBlock(5)], [plan(100, "v3.0.10")], "v3.0.9", observed_at=5)
    assert [o.msg_id for o in one.publishes] == [o.msg_id for o in two.publishes]


def test_plans_the_chain_no_longer_lists_are_forgotten() -> None:
    first = decide(WatcherState(), [], [plan(100), plan(200)], None, observed_at=1)
    second = decide(first.state, [], [plan(200)], None, observed_at=101)
    assert sorted(second.state.plans) == [200] and second.plans == ()


def test_unusable_plans_are_refused_once_with_a_reason() -> None:
    observed = [plan(100, "v3.0.9/../x"), plan(200, ""), plan(300)]
    first = decide(WatcherState(), [], observed, None, observed_at=1)
    assert [p.height for p in first.plans] == [300]
    reasons = dict((p.height, r) for p, r in first.refused_plans)
    assert "path separator" in reasons[100] and "API-binaries-only" in reasons[200]
    again = decide(first.state, [], observed, None, observed_at=2)
    assert again.refused_plans == () and again.plans == ()
    fixed = decide(again.state, [], [plan(100, "v3.0.11"), plan(200, ""), plan(300)], None, observed_at=3)
    assert [(p.height, str(p.node_version)) for p in fixed.plans] == [(100, "v3.0.11")]


def test_plans_not_read_this_step_are_kept() -> None:
    first = decide(WatcherState(), [], [plan(100)], None, observed_at=1)
    second = decide(first.state, [ObservedBlock(2)], None, None, observed_at=2)
    assert dict(second.state.plans) == dict(first.state.plans) and second.plans == ()


# -- version --------------------------------------------------------------------------------


def test_version_is_published_on_change_with_the_height_it_was_read_at() -> None:
    state = WatcherState(last_height=9, chain_version="v3.0.8")
    unchanged = decide(state, [ObservedBlock(10)], [], "v3.0.8", observed_at=10)
    assert unchanged.version is None
    changed = decide(unchanged.state, [ObservedBlock(11)], [], "v3.0.9", observed_at=11)
    assert changed.version == ChainVersionObserved(current_version="v3.0.9", height=11, plans=())  # type: ignore[arg-type]
    assert changed.publishes[-1].msg_id == "chain-version-11-v3.0.9"
    assert changed.state.chain_version == "v3.0.9"


def test_start_up_announces_the_version_even_if_unchanged() -> None:
    state = WatcherState(last_height=10, chain_version="v3.0.8")
    step = decide(state, [], [], "v3.0.8", observed_at=10, announce_version=True)
    assert step.version is not None and step.version.height == 10


@pytest.mark.parametrize(("raw", "reason"), [("", "no MLNodeVersion"), ("bad version", "whitespace")])
def test_an_unusable_chain_version_is_reported_not_published(raw: str, reason: str) -> None:
    step = decide(WatcherState(chain_version="v3.0.8"), [], [], raw, observed_at=5)
    assert step.version is None and step.refused_version is not None
    assert reason in step.refused_version[1]
    assert decide(step.state, [], [], raw, observed_at=6).refused_version is None  # reported once


# -- state, backoff, settings ---------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    state = WatcherState(
        last_height=42, chain_version="v3.0.8", plans={100: KnownPlan("v3.0.9", "n", '{"a":1}', 2)}
    )
    assert WatcherState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b'{"format": 9}', b'{"format":1,"last_height":0,"chain_version":null,"plans":{}}']
)
def test_corrupt_state_is_refused(raw: bytes) -> None:
    with pytest.raises(CorruptState):
        WatcherState.from_json(raw)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert backoff_delay(0, 0.5, 30, rand=0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, rand=1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, rand=1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rand=1.0) == 30.0
    assert backoff_delay(10_000, 0.5, 30, rand=0.5) == 22.5


def test_lag() -> None:
    assert lag_blocks(10, 15) == 5 and lag_blocks(None, 15) == 15 and lag_blocks(20, 15) == 0
    assert lag_blocks(10, None) == 0


def test_websocket_url_follows_the_rpc_url() -> None:
    assert (
        ChainWatcherSettings(rpc_url="http://node:26657/").resolved_websocket_url
        == "ws://node:26657/websocket"
    )
    assert ChainWatcherSettings(rpc_url="https://rpc.example/chain").resolved_websocket_url == (
        "wss://rpc.example/chain/websocket"
    )


def test_settings_refuse_bad_addresses() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ChainWatcherSettings(rpc_url="node:26657")
    with pytest.raises(ValueError, match="host:port"):
        ChainWatcherSettings(grpc_address="node")


def test_block_time_is_kept() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    step = decide(WatcherState(last_height=1), [ObservedBlock(2, HASH, when)], None, None, observed_at=2)
    assert step.blocks[0].time == when
