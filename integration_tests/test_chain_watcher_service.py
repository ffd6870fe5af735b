"""The chain-watcher against mock_chain and a real nats-server: what reaches the CHAIN stream."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime

import grpc
import httpx
import pytest

from integration_tests.chain_support import (
    ChainControl,
    StreamReader,
    running_watcher,
    watcher_settings,
)
from integration_tests.support import eventually, propose_cli
from mock_chain.server import MockChainServer
from proto.inference.inference import query_pb2, query_pb2_grpc
from services.chain_watcher.service import ChainWatcher
from shared.bus import Bus
from shared.settings import NatsSettings
from tests.unit.test_chain_watcher_frames import DOC_EVENT

RECONNECTS = "mlnode_upgrade_chain_websocket_reconnects_total"
BACKFILLED = "mlnode_upgrade_chain_blocks_backfilled_total"
MALFORMED = "mlnode_upgrade_chain_malformed_frames_total"
ERRORS = "mlnode_upgrade_chain_watcher_errors_total"


@pytest.fixture
def reader(bus: Bus) -> StreamReader:
    return StreamReader(bus)


def at_cursor(watcher: ChainWatcher, height: int) -> bool:
    return watcher.state.last_height == height


async def subscribed(watcher: ChainWatcher, control: ChainControl) -> bool:
    return watcher.websocket_connected and (await control.websockets())["subscriptions"] == 1


async def has_blocks_up_to(reader: StreamReader, height: int) -> bool:
    await reader.refresh()
    return height in reader.block_heights()


async def _count(reader: StreamReader, subject: str, n: int) -> bool:
    await reader.refresh()
    return len(reader.of(subject)) == n


async def assert_blocks_match_the_chain(
    reader: StreamReader, control: ChainControl, start: int, end: int
) -> None:
    blocks = reader.of("chain.block")
    assert [b["height"] for b in blocks] == list(range(start, end + 1))
    for block in blocks:
        assert block["hash"] == await control.block_hash(block["height"])


async def test_every_block_reaches_the_stream_in_order(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    await control.advance(2)
    async with running_watcher(watcher_settings(chain, nats_settings)) as watcher:
        await eventually(lambda: at_cursor(watcher, 2), message="first block published")
        for _ in range(20):
            await control.advance(1)
        await control.advance(30)  # a burst: 30 events back to back
        for _ in range(10):
            await control.advance(1)
        await eventually(lambda: has_blocks_up_to(reader, 62), message="block 62 on the stream")
    await assert_blocks_match_the_chain(reader, control, 2, 62)
    ids = [m.msg_id for m in reader.messages if m.subject == "chain.block"]
    assert ids == [f"block-{h}-{(await control.block_hash(h))[:16]}" for h in range(2, 63)]


async def test_two_pending_plans_each_published_once_and_versions_at_their_heights(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    await control.advance(1)
    settings = watcher_settings(chain, nats_settings)
    async with running_watcher(settings) as watcher:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        await control.propose((10, "v3.0.9"))
        await control.propose((14, "v3.0.10"))
        for _ in range(5):
            await control.advance(1)
        await eventually(lambda: at_cursor(watcher, 6), message="both plans stored and seen")
    # A restart while both plans are pending must not announce them again.
    async with running_watcher(settings) as watcher:
        await eventually(lambda: _count(reader, "chain.version", 2), message="the restart's snapshot")
        for _ in range(10):
            await control.advance(1)
        await eventually(lambda: at_cursor(watcher, 16), message="past both plans")
        await reader.refresh()

    plans = reader.of("chain.upgrade.scheduled")
    assert plans == [
        {
            "height": 10,
            "node_version": "v3.0.9",
            "name": "PartialUpgrade at height 10 for node version v3.0.9",
            "api_binaries_json": "",
        },
        {
            "height": 14,
            "node_version": "v3.0.10",
            "name": "PartialUpgrade at height 14 for node version v3.0.10",
            "api_binaries_json": "",
        },
    ]
    versions = [(v["current_version"], v.get("height")) for v in reader.of("chain.version")]
    assert versions == [("v3.0.8", 1), ("v3.0.8", 6), ("v3.0.9", 10), ("v3.0.10", 14)]  # 6: restart snapshot
    # A plan is on the bus before the block at its height; the chain's version after that block.
    for height, version in [(10, "v3.0.9"), (14, "v3.0.10")]:
        plan_seq = reader.seq_of("chain.upgrade.scheduled", height=height)
        block_seq = reader.seq_of("chain.block", height=height)
        version_seq = reader.seq_of("chain.version", current_version=version)
        assert plan_seq < block_seq < version_seq
    await assert_blocks_match_the_chain(reader, control, 1, 16)


async def test_250_plans_are_all_seen_once(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    await control.advance(1)
    async with running_watcher(watcher_settings(chain, nats_settings)) as watcher:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        await control.propose(*[(1000 + i, f"v3.1.{i}") for i in range(250)])
        for _ in range(5):
            await control.advance(1)
        await eventually(lambda: at_cursor(watcher, 6), message="blocks past the vote")
        await reader.refresh()
    plans = reader.of("chain.upgrade.scheduled")
    assert sorted(p["height"] for p in plans) == list(range(1000, 1250))
    assert len({m.msg_id for m in reader.messages if m.subject == "chain.upgrade.scheduled"}) == 250


async def test_a_closed_websocket_costs_at_most_one_backoff_delay(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    backoff = 0.5
    settings = watcher_settings(
        chain, nats_settings, reconnect_initial_s=backoff, poll_interval_s=30, status_check_interval_s=30
    )
    await control.advance(1)
    async with running_watcher(settings) as watcher:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        await eventually(lambda: subscribed(watcher, control), message="subscribed")
        before = watcher.metrics.sample(RECONNECTS)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await control.fault("close-websockets"))["closed"] == 1
        await control.advance(3)  # while the socket is down: found by the /status fallback
        await eventually(lambda: subscribed(watcher, control), timeout=5, message="subscribed again")
        elapsed = loop.time() - started
        for _ in range(3):
            await control.advance(1)
        await eventually(lambda: at_cursor(watcher, 7), message="every block after the reconnect")
        await reader.refresh()
        assert watcher.metrics.sample(RECONNECTS) - before == 1
    assert elapsed < backoff + 0.5, f"reconnect took {elapsed:.2f}s, more than one backoff delay"
    await assert_blocks_match_the_chain(reader, control, 1, 7)


async def test_skipped_events_are_filled_from_block_in_order(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    settings = watcher_settings(chain, nats_settings, poll_interval_s=30, status_check_interval_s=30)
    await control.advance(1)
    async with running_watcher(settings) as watcher:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        await eventually(lambda: subscribed(watcher, control), message="subscribed")
        fetched = watcher.metrics.sample(BACKFILLED)
        await control.fault("skip-events", {"count": 5})
        await control.advance(5)  # no events for 2..6
        await control.advance(1)  # the event for 7 reveals the gap
        await eventually(lambda: at_cursor(watcher, 7), message="gap filled")
        assert watcher.metrics.sample(BACKFILLED) - fetched == 5
    await reader.refresh()
    await assert_blocks_match_the_chain(reader, control, 1, 7)


async def test_malformed_frames_are_skipped_and_a_documentation_event_is_accepted(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    settings = watcher_settings(chain, nats_settings, poll_interval_s=30, status_check_interval_s=30)
    await control.advance(1)
    async with running_watcher(settings) as watcher:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        await eventually(lambda: subscribed(watcher, control), message="subscribed")
        reconnects = watcher.metrics.sample(RECONNECTS)
        fetched = watcher.metrics.sample(BACKFILLED)
        await control.send_raw("{garbage")
        await control.send_raw(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": "1",
                    "result": {
                        "data": {
                            "type": "tendermint/event/NewBlock",
                            "value": {"block": {"header": {"height": "x"}}},
                        }
                    },
                }
            )
        )
        await eventually(lambda: watcher.metrics.sample(MALFORMED) == 2, message="two frames skipped")

        # Block 2 exists but its event is withheld; the documentation-shaped event announces it
        # (a hint: what is published is block 2 as /block serves it, the frame's time is not).
        await control.fault("skip-events", {"count": 1})
        await control.advance(1)
        event = copy.deepcopy(DOC_EVENT)
        event["id"] = "1"
        event["result"]["data"]["value"]["block"]["header"]["height"] = "2"
        event["result"]["data"]["value"]["block_id"]["hash"] = await control.block_hash(2)
        await control.send_raw(json.dumps(event))
        await eventually(lambda: at_cursor(watcher, 2), message="block 2 from the hand-written event")
        assert watcher.metrics.sample(BACKFILLED) == fetched  # the event announced block 2
        assert watcher.metrics.sample(RECONNECTS) == reconnects and watcher.websocket_connected
    await reader.refresh()
    block = reader.of("chain.block")[-1]
    served = await control.block(2)
    assert block["height"] == 2 and block["hash"] == served["block_id"]["hash"]
    assert datetime.fromisoformat(block["time"]) == datetime.fromisoformat(served["block"]["header"]["time"])
    assert block["time"] != "2019-04-22T17:01:51.701356Z"  # the documentation frame's time


async def test_readyz_reports_lag_and_blocks_wait_for_the_plans(
    chain: MockChainServer, control: ChainControl, nats_settings: NatsSettings
) -> None:
    settings = watcher_settings(chain, nats_settings, max_lag_blocks=3, status_check_interval_s=0.2)
    await control.advance(1)
    async with running_watcher(settings) as watcher, httpx.AsyncClient() as http:
        await eventually(lambda: at_cursor(watcher, 1), message="started")
        ops = f"http://127.0.0.1:{watcher.ops_port}"
        await eventually(lambda: _ready(http, ops, True), message="ready")

        await control.fault("grpc", {"code": "UNAVAILABLE"})
        await control.advance(5)
        await eventually(lambda: _ready(http, ops, False), message="not ready while lagging")
        await eventually(
            lambda: watcher.metrics.sample(ERRORS, kind="grpc") >= 1, message="the failed query counted"
        )
        body = (await http.get(f"{ops}/readyz")).json()
        assert body["checks"]["lag_blocks"] == {"ok": False} and body["checks"]["chain_reachable"] == {
            "ok": True
        }
        assert watcher.state.last_height == 1  # no block is published before its plans could be read
        metrics = (await http.get(f"{ops}/metrics")).text
        assert "mlnode_upgrade_chain_lag_blocks 5.0" in metrics
        assert 'mlnode_upgrade_chain_watcher_errors_total{kind="grpc"}' in metrics

        await control.http.delete("/mock/faults/grpc")
        await eventually(lambda: at_cursor(watcher, 6), timeout=10, message="caught up after the fault")
        await eventually(lambda: _ready(http, ops, True), message="ready again")
        assert (await http.get(f"{ops}/healthz")).json()["service"] == "chain-watcher"


async def _ready(http: httpx.AsyncClient, ops: str, expected: bool) -> bool:
    return ((await http.get(f"{ops}/readyz")).status_code == 200) == expected


async def test_a_cli_proposal_passes_the_vote_and_switches_the_version_at_its_height(
    chain: MockChainServer, control: ChainControl, reader: StreamReader, nats_settings: NatsSettings
) -> None:
    await control.advance(2)
    async with running_watcher(watcher_settings(chain, nats_settings)) as watcher:
        await eventually(lambda: at_cursor(watcher, 2), message="started")
        code, out, err = await propose_cli(
            "--height", "12", "--node-version", "v3.0.9", "--deposit", "1000ngonka", "--submit", chain.rpc_url
        )
        assert code == 0, err
        assert "submitted proposal 1: voting ends at height 5" in out and "warning" not in err

        code, _, err = await propose_cli(
            "--height", "4", "--node-version", "v3.0.10", "--deposit", "1ngonka", "--submit", chain.rpc_url
        )
        assert code == 1
        assert "voting period is 3 blocks" in err  # the CLI's warning
        assert "not in the future when the vote ends" in err  # the chain's refusal

        async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
            stub = query_pb2_grpc.QueryStub(channel)
            await control.advance(3)  # the vote ends at 5
            listed = await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest())
            assert [(p.height, p.node_version, p.name) for p in listed.partialUpgrade] == [
                (12, "v3.0.9", "PartialUpgrade at height 12 for node version v3.0.9")
            ]
            for _ in range(7):
                await control.advance(1)
            version = await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
            assert version.mlnode_version.current_version == "v3.0.9"
        await eventually(lambda: at_cursor(watcher, 12), message="the upgrade height")
        await reader.refresh()
    assert reader.of("chain.upgrade.scheduled") == [
        {
            "height": 12,
            "node_version": "v3.0.9",
            "name": "PartialUpgrade at height 12 for node version v3.0.9",
            "api_binaries_json": "",
        }
    ]
    assert reader.of("chain.version")[-1] == {"current_version": "v3.0.9", "height": 12, "plans": []}
