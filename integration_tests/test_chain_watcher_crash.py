"""SIGKILL the chain-watcher mid-stream, change the chain while it is dead, restart it: nothing lost,
nothing stored twice, nothing re-announced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.chain_support import (
    ChainControl,
    StreamReader,
    WatcherProcess,
    running_chain,
)
from integration_tests.support import eventually
from services.chain_watcher.core import WatcherState
from shared.bus import Bus
from shared.events import BlockCommitted


@pytest.fixture
def processes() -> Iterator[list[WatcherProcess]]:
    started: list[WatcherProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def _state(http: httpx.AsyncClient, proc: WatcherProcess) -> dict[str, Any]:
    try:
        return dict((await http.get(f"{proc.ops_url}/state", timeout=1)).json())
    except httpx.TransportError:
        return {}


async def _cursor_at_least(http: httpx.AsyncClient, proc: WatcherProcess, height: int) -> bool:
    assert proc.proc.poll() is None, proc.log()
    cursor = (await _state(http, proc)).get("cursor")
    return cursor is not None and cursor >= height


async def _stored_cursor(bus: Bus) -> WatcherState:
    entry = await (await bus.js.key_value("chain_watcher")).get("cursor")
    assert entry.value is not None
    return WatcherState.from_json(entry.value)


async def test_sigkill_and_restart_lose_nothing_and_store_no_duplicate(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path, processes: list[WatcherProcess]
) -> None:
    async with running_chain(voting_period_blocks=2) as chain, httpx.AsyncClient() as http:
        control = ChainControl(chain)
        reader = StreamReader(bus)
        await control.advance(1)
        await control.propose((30, "v3.0.9"))

        processes.append(first := WatcherProcess(chain, nats_server.url, tmp_path))
        await eventually(lambda: _cursor_at_least(http, first, 1), timeout=20, message="first run started")
        await control.advance(150)  # a burst of events; kill the watcher in the middle of it
        await eventually(lambda: _cursor_at_least(http, first, 20), timeout=20, message="first run under way")
        first.kill()
        killed_at = (await _stored_cursor(bus)).last_height
        assert killed_at is not None

        # While it is dead: more blocks, and a second plan that is stored and still pending.
        await control.propose((200, "v3.0.10"))
        await control.advance(20)  # 171: the vote ended at 153

        # The crash window: the dead process had published the next block but not moved its cursor.
        next_height = killed_at + 1
        if next_height <= 171:
            await bus.publish(BlockCommitted(height=next_height, hash=await control.block_hash(next_height)))

        processes.append(second := WatcherProcess(chain, nats_server.url, tmp_path))
        await eventually(
            lambda: _cursor_at_least(http, second, 171), timeout=30, message="second run caught up"
        )
        for _ in range(35):
            await control.advance(1)  # past the second plan's height
        await eventually(lambda: _cursor_at_least(http, second, 206), timeout=20, message="past height 200")
        metrics = (await http.get(f"{second.ops_url}/metrics")).text
        second.stop()
        await control.aclose()

    await reader.refresh()
    assert reader.block_heights() == list(range(1, 207)), f"killed at {killed_at}"
    ids = [m.msg_id for m in reader.messages]
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert [(p["height"], p["node_version"]) for p in reader.of("chain.upgrade.scheduled")] == [
        (30, "v3.0.9"),
        (200, "v3.0.10"),
    ]
    versions = [(v["current_version"], v.get("height")) for v in reader.of("chain.version")]
    assert versions.count(("v3.0.9", 30)) == 1 and versions.count(("v3.0.10", 200)) == 1
    assert versions[0] == ("v3.0.8", 1)
    assert reader.seq_of("chain.upgrade.scheduled", height=200) < reader.seq_of("chain.block", height=200)
    # The republished block in the crash window was dropped by JetStream, not stored again.
    if next_height <= 171:
        assert 'events_published_total{duplicate="true",subject="chain.block"} 1.0' in metrics
    assert (await _stored_cursor(bus)).last_height == 206
