"""The chain's snapshot corrects hand-typed events: the real registry process, a real nats-server.

The test stands in for the chain-watcher (snapshots with the chain's height and plans, as it
publishes them) and for an operator typing `nats pub` by hand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.support import eventually
from integration_tests.test_registry import (
    Raw,
    Registries,
    _s,
    get_state,
    publish_raw,
    version_changed_messages,
)
from shared.bus import Bus
from shared.provisioning import Topology, provision
from shared.registry_api import RegistryState


@pytest.fixture
async def registries(nats_server: EmbeddedNats, tmp_path: Path, bus: Bus) -> AsyncIterator[Registries]:
    await provision(bus, Topology(registry_ack_wait_s=2))  # as VERSION_REGISTRY_ACK_WAIT_S
    regs = Registries(nats_server.url, tmp_path)
    yield regs
    regs.stop_all()


def block(height: int) -> Raw:
    return ("chain.block", json.dumps({"height": height}))


def blocks(first: int, last: int) -> list[Raw]:
    return [block(h) for h in range(first, last + 1)]


def plan(height: int, version: str) -> Raw:
    return ("chain.upgrade.scheduled", json.dumps({"height": height, "node_version": version}))


def snapshot(version: str, height: int, plans: dict[int, str]) -> Raw:
    listed = [{"height": h, "node_version": v} for h, v in sorted(plans.items())]
    return ("chain.version", json.dumps({"current_version": version, "height": height, "plans": listed}))


async def wait_height(base: str, height: int, chain_height: int | None = None) -> RegistryState:
    async def reached() -> bool:
        state = await get_state(base)
        return state.last_height == height and (chain_height is None or state.chain_height == chain_height)

    await eventually(reached, timeout=20, message=f"last_height {height}, chain_height {chain_height}")
    return await get_state(base)


async def metric(base: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def start_on_chain_at_30(bus: Bus, registries: Registries) -> str:
    _, base, _ = registries.start()
    await publish_raw(bus, [snapshot("v3.0.6", 1, {}), *blocks(2, 30), snapshot("v3.0.6", 30, {})])
    state = await wait_height(base, 30, chain_height=30)
    assert _s(state.current_version) == "v3.0.6"
    return base


async def test_a_hand_typed_block_far_above_the_chain_is_corrected_by_the_next_snapshot(
    bus: Bus, registries: Registries, tmp_path: Path
) -> None:
    base = await start_on_chain_at_30(bus, registries)
    # By hand: a plan at a height the chain is far from, and its block (the case).
    await publish_raw(bus, [plan(10027, "v3.0.9"), block(10027)])
    state = await wait_height(base, 10027)
    assert _s(state.current_version) == "v3.0.9"
    # A forged plan the chain never stores, then the chain's own: a real plan, its blocks.
    await publish_raw(bus, [plan(36, "v3.0.10"), plan(40, "v3.0.8"), *blocks(31, 32)])

    async def held() -> bool:
        return any(p.height == 40 for p in (await get_state(base)).pending)

    await eventually(held, message="the real plan is held")
    state = await get_state(base)
    assert _s(state.current_version) == "v3.0.9" and state.last_height == 10027  # not applied at once

    # The chain-watcher's next snapshot: the chain is at 32, on v3.0.6, and stores only plan 40.
    await publish_raw(bus, [snapshot("v3.0.6", 32, {40: "v3.0.8"})])
    state = await wait_height(base, 32, chain_height=32)
    assert _s(state.current_version) == "v3.0.6" and _s(state.chain_version) == "v3.0.6"
    assert [(p.height, str(p.node_version)) for p in state.pending] == [(40, "v3.0.8")]  # forged ones gone
    assert await metric(base, "mlnode_upgrade_registry_ahead_of_chain_total") == 1
    log = (tmp_path / "a.log").read_text()
    warning = next(json.loads(line) for line in log.splitlines() if "stepped back" in line)
    assert warning["level"] == "warning" and (warning["height"], warning["from_height"]) == (32, 10027)
    assert warning["event"] == "chain.version" and warning["version"] == "v3.0.6"

    await publish_raw(bus, blocks(33, 39))
    state = await wait_height(base, 39)
    assert _s(state.current_version) == "v3.0.6"  # neither 36 (forged) nor 40 one block early
    await publish_raw(bus, [block(40)])
    state = await wait_height(base, 40)
    assert _s(state.current_version) == "v3.0.8" and state.current_transition == "40-v3.0.8"
    changes = await version_changed_messages(bus)
    assert [(c.reason, _s(c.current), c.height) for c in changes] == [
        ("sync", "v3.0.6", 1),
        ("plan", "v3.0.9", 10027),  # the typed block, believed until the chain's word came
        ("sync", "v3.0.6", 32),
        ("plan", "v3.0.8", 40),
    ]


async def test_a_hand_typed_chain_version_is_corrected_by_the_next_snapshot(
    bus: Bus, registries: Registries
) -> None:
    base = await start_on_chain_at_30(bus, registries)
    await publish_raw(bus, [("chain.version", '{"current_version": "v3.0.9", "height": 10027}')])
    state = await wait_height(base, 10027, chain_height=10027)
    assert _s(state.current_version) == "v3.0.9"
    # A real plan arrives while the registry believes the typed height: it must not apply.
    await publish_raw(bus, [plan(40, "v3.0.8"), *blocks(31, 32)])
    await publish_raw(bus, [snapshot("v3.0.6", 32, {40: "v3.0.8"})])
    state = await wait_height(base, 32, chain_height=32)
    assert _s(state.current_version) == "v3.0.6"
    assert [(p.height, str(p.node_version)) for p in state.pending] == [(40, "v3.0.8")]

    await publish_raw(bus, blocks(33, 39))
    state = await wait_height(base, 39)
    assert _s(state.current_version) == "v3.0.6"
    await publish_raw(bus, [block(40)])
    state = await wait_height(base, 40)
    assert _s(state.current_version) == "v3.0.8" and state.current_transition == "40-v3.0.8"

    # A version typed without a height: adopted, then the chain's next snapshot puts it right.
    await publish_raw(bus, [("chain.version", '{"current_version": "v3.0.10"}')])

    async def typed() -> bool:
        return _s((await get_state(base)).current_version) == "v3.0.10"

    await eventually(typed, message="typed version adopted")
    await publish_raw(bus, [block(41), snapshot("v3.0.8", 41, {})])
    state = await wait_height(base, 41, chain_height=41)
    assert _s(state.current_version) == "v3.0.8"
    changes = await version_changed_messages(bus)
    assert [(c.reason, _s(c.current), c.height) for c in changes] == [
        ("sync", "v3.0.6", 1),
        ("sync", "v3.0.9", 10027),
        ("sync", "v3.0.6", 32),
        ("plan", "v3.0.8", 40),
        ("sync", "v3.0.10", 40),
        ("sync", "v3.0.8", 41),
    ]
