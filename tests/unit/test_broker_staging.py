"""The staged switch's plan: which nodes go early, when, and what each version keeps. No I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.broker.staging import (
    Candidate,
    Done,
    Hold,
    Stage,
    Staged,
    StagingPlan,
    StagingPolicy,
    Unstage,
    first_wave,
    next_step,
    plan,
)
from shared.versions import MLNodeVersion

NEW = MLNodeVersion("v3.0.8")
POLICY = StagingPolicy(share=0.5, old_floor=0.25, default_load_s=120, margin_s=10, margin_blocks=1)


def fleet(n: int, max_concurrent: int = 100) -> list[Candidate]:
    return [Candidate(f"node-{i}", max_concurrent, True, True) for i in range(n)]


def test_half_the_fleet_goes_early_with_the_lead_of_its_slowest_load() -> None:
    loads = {("node-0", NEW): 20.0, ("node-1", NEW): 5.0, ("node-2", NEW): 60.0, ("node-3", NEW): 8.0}
    p = plan(fleet(4), NEW, 1000, loads, block_time_s=5.0, policy=POLICY)
    assert p.early == ("node-1", "node-3")  # the fastest loaders first
    assert p.lead_s == 18.0  # node-3's 8 s + the 10 s margin
    assert p.start_height == 1000 - 4 - 1  # ceil(18 / 5) blocks + 1
    assert (p.old_capacity, p.new_capacity) == (200, 200)
    assert p.due(995) and p.due(999) and not p.due(994) and not p.due(1000)


def test_an_unmeasured_node_is_expected_to_take_the_default_load() -> None:
    p = plan(fleet(2), NEW, 1000, {}, block_time_s=6.0, policy=POLICY)
    assert p.early == ("node-0",) and p.lead_s == 130.0
    assert p.start_height == 1000 - math.ceil(130 / 6) - 1


def test_share_zero_keeps_the_all_at_once_switch() -> None:
    p = plan(fleet(10), NEW, 1000, {}, 5.0, StagingPolicy(share=0.0))
    assert not p.staged and "share 0" in p.why_not and not p.due(999)


def test_one_node_alone_is_never_staged() -> None:
    p = plan(fleet(1), NEW, 1000, {}, 5.0, POLICY)
    assert not p.staged and "one node alone" in p.why_not


def test_only_serving_nodes_with_the_target_ready_and_a_model_to_serve_go_early() -> None:
    nodes = [
        Candidate("a", 100, serving_current=False, target_ready=True),
        Candidate("b", 100, serving_current=True, target_ready=False),
        Candidate("c", 100, serving_current=True, target_ready=True, serving_work=False),  # PoC
        Candidate("d", 100, serving_current=True, target_ready=True),
        Candidate("e", 100, serving_current=True, target_ready=True),
        Candidate("f", 100, serving_current=True, target_ready=True),
    ]
    p = plan(nodes, NEW, 1000, {}, 5.0, POLICY)
    assert p.early == ("d", "e", "f")  # half of six; a, b and c are not candidates
    assert p.old_capacity == 200  # b and c, still on the old version (a serves nothing)


def test_the_old_version_keeps_its_capacity_floor() -> None:
    nodes = [Candidate("big", 1000, True, True), Candidate("small-1", 10, True, True)]
    nodes += [Candidate("small-2", 10, True, True)]
    p = plan(nodes, NEW, 1000, {("big", NEW): 1.0}, 5.0, POLICY)
    # "big" loads fastest but would leave 20 of 1020 (< 25 %): the small ones go instead (share 1).
    assert p.early == ("small-1",) and p.old_capacity == 1010


def test_no_candidate_says_why() -> None:
    nodes = [Candidate("a", 100, True, False), Candidate("b", 100, True, False)]
    p = plan(nodes, NEW, 1000, {}, 5.0, POLICY)
    assert not p.staged and "0 of 2" in p.why_not


def test_a_plan_seen_too_close_to_its_height_starts_at_once_and_says_it_is_late() -> None:
    p = plan(fleet(2), NEW, 10, {("node-0", NEW): 100.0, ("node-1", NEW): 100.0}, 1.0, POLICY)
    assert p.start_height == 1 and p.late(5) and p.due(5)


def test_bad_policies_are_refused() -> None:
    for bad in ({"share": 1.5}, {"old_floor": -0.1}, {"default_load_s": 0}, {"margin_blocks": -1}):
        with pytest.raises(ValueError, match=r"share and old_floor|default_load_s"):
            StagingPolicy(**bad)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=500), min_size=0, max_size=30),
    flags=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=30, max_size=30),
    share=st.floats(min_value=0, max_value=1),
    floor=st.floats(min_value=0, max_value=1),
    block_time=st.floats(min_value=0.1, max_value=30),
)
def test_any_fleet_keeps_old_capacity_and_stages_only_candidates(
    sizes: list[int],
    flags: list[tuple[bool, bool, bool]],
    share: float,
    floor: float,
    block_time: float,
) -> None:
    nodes = [Candidate(f"n{i}", size, *flags[i]) for i, size in enumerate(sizes)]
    p = plan(nodes, NEW, 10_000, {}, block_time, StagingPolicy(share=share, old_floor=floor))
    by_id = {c.node_id: c for c in nodes}
    total = sum(c.max_concurrent for c in nodes if c.serving_current)
    assert len(p.early) <= share * len(nodes)
    assert all(by_id[n].serving_current and by_id[n].target_ready and by_id[n].serving_work for n in p.early)
    if p.staged:
        assert p.old_capacity >= max(floor * total, 1) - 1e-9 and p.old_capacity > 0
        assert p.old_capacity + p.new_capacity == total
        assert p.start_height < p.height
    else:
        assert p.why_not


# --- next_step ---------------------------------------------------------------------------------------

OLD = MLNodeVersion("v3.0.6")
OTHER = MLNodeVersion("v3.0.9")


def planned(height: int = 1000, target: MLNodeVersion = NEW) -> StagingPlan:
    return plan(fleet(4), target, height, {}, 5.0, StagingPolicy(default_load_s=10, margin_s=0))


def test_staging_starts_once_the_plan_is_due_and_only_then() -> None:
    p = planned()  # lead 10 s = 2 blocks + 1: start at 997
    assert next_step(None, p, OLD, 996) == Hold()
    assert next_step(None, p, OLD, 997) == Stage(NEW, 1000, ("node-0", "node-1"))
    assert next_step(None, p, OLD, 1000) == Hold()  # at the height the switch itself moves every node
    assert next_step(None, None, OLD, 997) == Hold()


def test_a_staged_plan_holds_until_the_switch_and_then_is_done() -> None:
    staged = Staged(target=NEW, height=1000, nodes=("node-0", "node-1"))
    assert next_step(staged, planned(), OLD, 998) == Hold()
    assert next_step(staged, planned(), NEW, 1000) == Done()
    assert next_step(staged, None, NEW, 1001) == Done()


def test_a_cancelled_retargeted_or_moved_plan_hands_the_nodes_back() -> None:
    staged = Staged(target=NEW, height=1000, nodes=("node-0", "node-1"))
    cancelled = next_step(staged, None, OLD, 998)
    assert isinstance(cancelled, Unstage) and cancelled.back_to == OLD and "cancelled" in cancelled.reason
    retargeted = next_step(staged, planned(target=OTHER), OLD, 998)
    assert isinstance(retargeted, Unstage) and "v3.0.9" in retargeted.reason
    moved = next_step(staged, planned(height=2000), OLD, 998)
    assert isinstance(moved, Unstage) and moved.nodes == ("node-0", "node-1") and "2000" in moved.reason
    # Moved, but so little that it is still due: the staged nodes stay staged.
    assert next_step(staged, planned(height=999), OLD, 998) == Hold()
    # Not moved, only due later now (a faster load was measured since): staged is staged.
    assert next_step(staged, planned(), OLD, 990) == Hold()


def test_a_switch_to_another_version_takes_the_staged_nodes() -> None:
    staged = Staged(target=NEW, height=1000, nodes=("node-0",), source=OLD)
    rolled_back = MLNodeVersion("v3.0.5")
    assert next_step(staged, planned(), rolled_back, 998) == Done()  # a rollback moved every node
    assert next_step(staged, planned(), OLD, 998) == Hold()


# --- a rollback, staged the other way -----------------------------------------------------------------


def test_a_rollback_moves_a_first_wave_as_the_plan_would_stage_it() -> None:
    loads = {("node-3", OLD): 1.0}
    assert first_wave(fleet(4), OLD, loads, POLICY) == ("node-3", "node-0")  # the fastest first
    assert first_wave(fleet(1), OLD, {}, POLICY) == ()  # one node: all at once
    assert first_wave(fleet(4), OLD, {}, StagingPolicy(share=0)) == ()
    busy = [Candidate("a", 4, True, True), Candidate("b", 4, False, True, serving_work=False)]
    assert first_wave(busy, OLD, {}, POLICY) == ()  # b keeps its PoC; a alone must keep serving
