"""The chain-watcher's service logic behind its ports, without sockets: what it publishes, in
which order against the cursor, and what it does when another writer or the node gets in the way."""

from __future__ import annotations

import logging

import pytest

from services.chain_watcher.core import ObservedBlock, ObservedPlan, Outgoing, Step, WatcherState
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.watcher import Announcer, HeightNotServed
from shared.events import UpgradeScheduled
from shared.kv_store import StaleRevisionError
from shared.metrics import ServiceMetrics
from shared.versions import MLNodeVersion
from tests.unit.chain_watcher_fakes import FakeSink, WatcherRig, watcher_rig

PLANS_PUBLISHED = "mlnode_upgrade_chain_plans_published_total"


async def sync_all(rig: WatcherRig) -> None:
    """What the loops do, one call at a time: one /status poll, then every step there is work for."""
    await rig.watcher.observer.poll_status_once()
    while rig.watcher.sync.has_work():
        await rig.watcher.sync.step()


async def test_a_block_range_is_published_in_order_each_block_before_its_cursor_write() -> None:
    rig = await watcher_rig(served=5, cursor=WatcherState(last_height=2, chain_version="v3.0.6"))
    await sync_all(rig)
    # A block's `Nats-Msg-Id` is `block-<height>-<hash prefix>`.
    blocks_and_saves = [
        ("publish", "-".join(str(what).split("-")[:2])) if kind == "publish" else (kind, what)
        for kind, what in rig.journal
        if kind == "save" or str(what).startswith("block-")
    ]
    assert blocks_and_saves == [
        ("publish", "block-3"),
        ("save", 3),
        ("publish", "block-4"),
        ("save", 4),
        ("publish", "block-5"),
        ("save", 5),
    ]
    # The start-up snapshot of the chain's version goes out with the first block, before its save.
    first_save = rig.journal.index(("save", 3))
    assert any(str(msg_id).startswith("chain-version-") for _, msg_id in rig.journal[:first_save])
    assert rig.watcher.state.last_height == 5 and rig.document.value.last_height == 5
    assert rig.watcher.describe()["lag"] == 0


async def test_a_first_run_starts_at_the_height_the_node_serves() -> None:
    rig = await watcher_rig(served=7)
    await sync_all(rig)
    assert [e for e in rig.journal if e[0] == "save"] == [("save", 7)]


async def test_another_writer_of_the_cursor_is_logged_re_read_and_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = await watcher_rig(served=5, cursor=WatcherState(last_height=2))
    await rig.watcher.observer.poll_status_once()
    rig.document.other_writer = WatcherState(last_height=40)
    with caplog.at_level(logging.INFO), pytest.raises(StaleRevisionError):
        await rig.watcher.sync.step()
    assert "another chain-watcher changed the cursor" in caplog.text
    assert rig.watcher.state.last_height == 40  # the other writer's cursor, re-read
    assert ("save", 3) not in rig.journal


async def test_a_height_a_frame_claims_before_the_node_serves_it_is_not_published() -> None:
    rig = await watcher_rig(served=5, cursor=WatcherState(last_height=5))
    await rig.watcher.observer.poll_status_once()
    rig.watcher.observer.note_frame(ObservedBlock(6))
    with pytest.raises(HeightNotServed):
        await rig.watcher.sync.step()
    assert rig.journal == [] and rig.watcher.state.last_height == 5


async def test_a_new_plan_is_published_before_the_block_it_was_read_at() -> None:
    rig = await watcher_rig(served=3, cursor=WatcherState(last_height=2, chain_version="v3.0.6"))
    rig.chain.plans = [ObservedPlan(height=100, node_version="v3.0.8")]
    await sync_all(rig)
    ids = [str(msg_id) for kind, msg_id in rig.journal if kind == "publish"]
    assert ids.index("plan-100-v3.0.8") < rig.journal.index(("save", 3))
    assert rig.metrics.sample(PLANS_PUBLISHED) == 1


async def test_a_duplicate_ack_is_logged_but_not_counted_as_a_new_plan() -> None:
    metrics = ServiceMetrics("chain-watcher")
    sink = FakeSink([])
    plan = UpgradeScheduled(height=100, node_version=MLNodeVersion("v3.0.8"))
    out = Outgoing(plan, "plan-100-v3.0.8")
    await Announcer(sink, WatcherMetrics(metrics), 0.0).announce(
        Step(publishes=(out, out), state=WatcherState()), None
    )
    assert [e[1] for e in sink.journal] == ["plan-100-v3.0.8", "plan-100-v3.0.8"]
    assert metrics.sample(PLANS_PUBLISHED) == 1
