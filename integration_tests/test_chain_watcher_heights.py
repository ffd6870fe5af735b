"""Heights only from the chain: forged frames, a lagging query node, periodic version snapshots.

Real processes: `python -m mock_chain`, a nats-server, `python -m services.chain_watcher`. The
websocket's frames are hints; what reaches the CHAIN stream is what the query node serves.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.chain_support import (
    ChainControl,
    ChainProcess,
    StreamReader,
    WatcherProcess,
)
from integration_tests.support import eventually
from proto.inference.inference import query_pb2, query_pb2_grpc
from shared.bus import Bus
from tests.unit.test_chain_watcher_frames import DOC_EVENT

FORGED_HASH = "AB" * 32


@pytest.fixture
def started() -> Iterator[list[ChainProcess | WatcherProcess]]:
    procs: list[ChainProcess | WatcherProcess] = []
    yield procs
    for proc in reversed(procs):
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2) as client:
        yield client


async def _chain(
    tmp_path: Path, started: list[ChainProcess | WatcherProcess], *args: str
) -> tuple[ChainProcess, ChainControl]:
    chain = ChainProcess(tmp_path, "--voting-period-blocks", "3", *args)
    started.append(chain)
    await eventually(chain.started, timeout=20, message="mock_chain serving")
    return chain, ChainControl(chain)


async def _watcher(
    chain: ChainProcess,
    nats: EmbeddedNats,
    bus: Bus,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    **env: str,
) -> WatcherProcess:
    watcher = WatcherProcess(chain, nats.url, tmp_path, **env)
    started.append(watcher)
    return watcher


async def _state(http: httpx.AsyncClient, watcher: WatcherProcess) -> dict[str, Any]:
    assert watcher.proc.poll() is None, watcher.log()
    try:
        return dict((await http.get(f"{watcher.ops_url}/state")).json())
    except httpx.TransportError:
        return {}


async def _metric(http: httpx.AsyncClient, watcher: WatcherProcess, name: str) -> float:
    text = (await http.get(f"{watcher.ops_url}/metrics")).text
    found = re.search(rf"^mlnode_upgrade_{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _subscribed(http: httpx.AsyncClient, watcher: WatcherProcess) -> bool:
    return await _metric(http, watcher, "chain_websocket_connected") == 1


async def _waited_at_least(http: httpx.AsyncClient, watcher: WatcherProcess, n: int) -> bool:
    return await _metric(http, watcher, "chain_height_waits_total") >= n


async def _at(http: httpx.AsyncClient, watcher: WatcherProcess, **expected: int) -> bool:
    state = await _state(http, watcher)
    return all(state.get(key) == value for key, value in expected.items())


def _frame(height: int, block_hash: str) -> str:
    """A NewBlock frame for our subscription (id "1"), in the shape the CometBFT docs show."""
    event = copy.deepcopy(DOC_EVENT)
    event["id"] = "1"
    event["result"]["data"]["value"]["block"]["header"]["height"] = str(height)
    event["result"]["data"]["value"]["block_id"]["hash"] = block_hash
    return json.dumps(event)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def _assert_real_blocks(reader: StreamReader, control: ChainControl, start: int, end: int) -> None:
    await reader.refresh()
    blocks = [m for m in reader.messages if m.subject == "chain.block"]
    assert [b.payload["height"] for b in blocks] == list(range(start, end + 1))
    assert len({b.msg_id for b in blocks}) == len(blocks)
    for block in blocks:
        served = await control.block(block.payload["height"])
        assert block.payload["hash"] == served["block_id"]["hash"]
        assert _instant(block.payload["time"]) == _instant(served["block"]["header"]["time"])


async def test_a_frame_for_a_future_height_publishes_nothing_above_the_chain(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    http: httpx.AsyncClient,
) -> None:
    chain, control = await _chain(tmp_path, started)
    reader = StreamReader(bus)
    await control.advance(15)
    watcher = await _watcher(chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, watcher, cursor=15), timeout=30, message="the watcher at 15")
    await eventually(lambda: _subscribed(http, watcher), message="subscribed to NewBlock")

    assert await control.send_raw(_frame(22, FORGED_HASH)) == 1
    await eventually(lambda: _at(http, watcher, claimed_height=22), message="the forged frame seen")
    await eventually(
        lambda: _waited_at_least(http, watcher, 2),
        message="block 16 asked for and refused as not served, twice",
    )
    await reader.refresh()
    assert max(reader.block_heights()) == 15, "a block above the chain's height reached the stream"
    assert (await _state(http, watcher))["cursor"] == 15

    for height in range(16, 26):
        assert await control.advance(1) == height
        await eventually(lambda: _at(http, watcher, cursor=height), message=f"block {height} published")  # noqa: B023
        await reader.refresh()
        assert max(reader.block_heights()) == height == await control.height()

    await _assert_real_blocks(reader, control, 15, 25)
    assert await _metric(http, watcher, "chain_frames_contradicted_total") == 1  # block 22's forged hash
    assert FORGED_HASH not in {p.get("hash") for p in reader.of("chain.block")}


async def test_a_query_node_lagging_behind_the_websocket(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    http: httpx.AsyncClient,
) -> None:
    chain, control = await _chain(tmp_path, started)
    reader = StreamReader(bus)
    await control.advance(5)
    await control.propose((14, "v3.0.9"))  # stored at 8, applied in end-block of 14
    watcher = await _watcher(chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, watcher, cursor=5), timeout=30, message="the watcher at 5")
    await eventually(lambda: _subscribed(http, watcher), message="subscribed to NewBlock")

    lag = 3
    await control.lag(lag)  # behind a load balancer: queries now reach a node three blocks behind
    for height in range(6, 21):
        assert await control.advance(1) == height
        served = height - lag  # /status on the query node says so
        assert await control.height() == served
        await eventually(lambda: _at(http, watcher, claimed_height=height), message=f"frame {height}")  # noqa: B023
        if served > 5:
            await eventually(lambda: _at(http, watcher, cursor=served), message=f"block {served}")  # noqa: B023
        await reader.refresh()
        assert max(reader.block_heights()) <= max(served, 5), f"a block above {served} was published"
        versions = [v for v in reader.of("chain.version") if v["current_version"] == "v3.0.9"]
        assert all(v["height"] == 14 for v in versions) and (not versions or served >= 14)
    assert await _metric(http, watcher, "chain_height_waits_total") >= 1

    await control.lag(0)  # the node caught up: no new frame needed, the watcher asks again
    await eventually(lambda: _at(http, watcher, cursor=20), message="caught up to 20")
    await _assert_real_blocks(reader, control, 5, 20)
    assert [(v["current_version"], v["height"]) for v in reader.of("chain.version")] == [
        ("v3.0.8", 5),
        ("v3.0.9", 14),
    ]
    assert reader.seq_of("chain.block", height=14) < reader.seq_of("chain.version", height=14)


async def _stored_plans(stub: query_pb2_grpc.QueryStub, height: int) -> tuple[str, list[dict[str, Any]]]:
    pin = (("x-cosmos-block-height", str(height)),)
    version = await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest(), metadata=pin)
    listed = await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest(), metadata=pin)
    plans = [
        {"height": p.height, "node_version": p.node_version, "name": p.name}
        for p in listed.partialUpgrade
        if p.height > height
    ]
    return version.mlnode_version.current_version, plans


async def test_periodic_version_snapshots_at_the_newest_published_height(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    http: httpx.AsyncClient,
) -> None:
    interval = 0.5
    chain, control = await _chain(tmp_path, started, "--block-time-s", "0.2")
    reader = StreamReader(bus)
    await eventually(lambda: _height_at_least(control, 2), message="blocks on the timer")
    now = await control.height()
    first, second = now + 12, now + 1000
    await control.propose((first, "v3.0.9"), (second, "v3.0.10"))
    watcher = await _watcher(
        chain, nats_server, bus, tmp_path, started, CHAIN_WATCHER_VERSION_SNAPSHOT_INTERVAL_S=str(interval)
    )
    await eventually(
        lambda: _cursor_at_least(http, watcher, first + 5), timeout=60, message="past the first plan"
    )
    await eventually(lambda: _snapshots_at_least(reader, 12), timeout=30, message="a dozen snapshots")
    watcher.stop()
    await reader.refresh()

    snapshots = [m for m in reader.messages if m.subject == "chain.version"]
    newest = 0
    heights_seen: set[int] = set()
    for m in reader.messages:
        if m.subject == "chain.block":
            newest = m.payload["height"]
            heights_seen.add(newest)
        elif m.subject == "chain.version":
            # After its block, before the next; never lower than a block already published.
            assert m.payload["height"] == newest and newest in heights_seen, m
            assert m.msg_id == f"chain-version-{newest}-{m.payload['current_version']}"

    times = [m.time for m in snapshots if m.time is not None]
    assert len(times) == len(snapshots)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert max(gaps) < 3 * interval, f"snapshot gaps {gaps}"

    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        for m in snapshots:
            version, plans = await _stored_plans(stub, m.payload["height"])
            assert m.payload["current_version"] == version
            assert m.payload["plans"] == plans, m
    listed = {tuple(p["height"] for p in m.payload["plans"]) for m in snapshots}
    assert (first, second) in listed and (second,) in listed  # the first plan applied meanwhile
    assert {m.payload["current_version"] for m in snapshots} == {"v3.0.8", "v3.0.9"}


async def _height_at_least(control: ChainControl, height: int) -> bool:
    return await control.height() >= height


async def _cursor_at_least(http: httpx.AsyncClient, watcher: WatcherProcess, height: int) -> bool:
    cursor = (await _state(http, watcher)).get("cursor")
    return cursor is not None and cursor >= height


async def _snapshots_at_least(reader: StreamReader, n: int) -> bool:
    await reader.refresh()
    return len(reader.of("chain.version")) >= n


async def test_blocks_the_node_has_pruned_are_published_by_height_only(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    http: httpx.AsyncClient,
) -> None:
    chain, control = await _chain(tmp_path, started, "--block-retention-blocks", "10")
    reader = StreamReader(bus)
    await control.advance(1)
    first = await _watcher(chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, first, cursor=1), timeout=30, message="the first run at 1")
    first.stop()
    await control.advance(30)  # 31: /block serves 22..31 only
    pruned = await control.http.get("/block", params={"height": 5})
    assert pruned.json()["error"]["data"] == "height 5 is not available, lowest height is 22"

    second = await _watcher(chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, second, cursor=31), timeout=30, message="the second run at 31")
    await reader.refresh()
    blocks = reader.of("chain.block")
    assert [b["height"] for b in blocks] == list(range(1, 32))
    assert all(set(b) == {"height"} for b in blocks[1:21])  # 2..21: pruned, the height only
    for block in blocks[21:]:
        assert block["hash"] == await control.block_hash(block["height"])


async def test_a_chain_with_no_block_yet_gets_its_version_announced_without_a_height(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
) -> None:
    """So the registry can sync before the first block (a fresh local chain), as before."""
    chain, control = await _chain(tmp_path, started)
    assert await control.height() == 0
    await _watcher(chain, nats_server, bus, tmp_path, started)
    reader = StreamReader(bus)

    async def announced() -> bool:
        await reader.refresh()
        return bool(reader.of("chain.version"))

    await eventually(announced, timeout=30, message="the start-up snapshot")
    assert reader.of("chain.version") == [{"current_version": "v3.0.8", "plans": []}]
    await control.advance(1)

    async def first_block() -> bool:
        await reader.refresh()
        return reader.block_heights() == [1]

    await eventually(first_block, timeout=30, message="block 1 after it")


async def test_a_reset_chain_is_recognised_and_the_cursor_starts_over(
    bus: Bus,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    started: list[ChainProcess | WatcherProcess],
    http: httpx.AsyncClient,
) -> None:
    """`docker compose down` and `up` without -v: a fresh chain, the old cursor (at 30) kept."""
    old_chain, old_control = await _chain(tmp_path, started)
    await old_control.advance(1)
    first = await _watcher(old_chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, first, cursor=1), timeout=30, message="the first run at 1")
    await old_control.advance(29)
    await eventually(lambda: _at(http, first, cursor=30), timeout=30, message="the first run at 30")
    first.stop()
    old_chain.stop()

    chain, control = await _chain(tmp_path, started)
    await control.advance(3)
    second = await _watcher(chain, nats_server, bus, tmp_path, started)
    await eventually(lambda: _at(http, second, cursor=3), timeout=30, message="started over at 3")
    await control.propose((12, "v3.0.9"))
    await control.advance(4)  # the vote ends; the plan is stored
    await eventually(lambda: _at(http, second, cursor=7), timeout=30, message="following the new chain")
    reader = StreamReader(bus)
    await reader.refresh()
    assert [p["height"] for p in reader.of("chain.upgrade.scheduled")] == [12]
    block_3 = [b for b in reader.of("chain.block") if b["height"] == 3]
    assert block_3[-1]["hash"] == await control.block_hash(3)  # the new chain's block, not the old one's
    assert "another chain than the cursor's" in second.log()
