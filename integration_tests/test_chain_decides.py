"""The chain decides: hand-typed events are undone by the chain's own facts, end to end.

Real mock_chain (CometBFT RPC, websocket and gRPC), the real chain-watcher publishing periodic
`chain.version` snapshots, the real registry process, a real nats-server. An operator types
events by hand; the registry must return to the chain's version by the first snapshot after
them, and a plan the chain really stores must then apply exactly at its height.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.chain_support import ChainControl, running_watcher, watcher_settings
from integration_tests.support import eventually
from integration_tests.test_registry import Registries, _s, get_state, publish_raw, version_changed_messages
from mock_chain.server import MockChainServer
from shared.bus import CHAIN_STREAM, Bus
from shared.provisioning import Topology, provision
from shared.registry_api import RegistryState
from shared.settings import NatsSettings

SNAPSHOT_INTERVAL_S = 1.0


@pytest.fixture
async def registries(nats_server: EmbeddedNats, tmp_path: Path, bus: Bus) -> AsyncIterator[Registries]:
    await provision(bus, Topology(registry_ack_wait_s=2))  # as VERSION_REGISTRY_ACK_WAIT_S
    regs = Registries(nats_server.url, tmp_path)
    yield regs
    regs.stop_all()


async def last_snapshot_seq(bus: Bus) -> int:
    try:
        msg = await bus.js.get_last_msg(CHAIN_STREAM.name, "chain.version")
    except Exception:
        return 0
    return int(msg.seq or 0)


async def until_corrected_by_the_next_snapshot(
    bus: Bus, control: ChainControl, base: str, after_seq: int, version: str
) -> RegistryState:
    """Advance the chain block by block until a snapshot newer than `after_seq` is on the stream,
    then the registry must hold the chain's version at the snapshot's height."""
    snapshot: dict[str, object] = {}

    async def new_snapshot() -> bool:
        seq = await last_snapshot_seq(bus)
        if seq <= after_seq:
            await control.advance(1)
            return False
        msg = await bus.js.get_msg(CHAIN_STREAM.name, seq)
        snapshot.update(json.loads(msg.data or b"{}"))
        return True

    await eventually(new_snapshot, timeout=20, interval=0.2, message="the chain-watcher's next snapshot")
    assert snapshot["current_version"] == version
    height = int(snapshot["height"])  # type: ignore[call-overload]

    async def corrected() -> bool:
        state = await get_state(base)
        return (state.chain_height or 0) >= height and _s(state.current_version) == version

    await eventually(corrected, timeout=10, message=f"the registry back on {version} at {height}")
    return await get_state(base)


async def test_hand_typed_events_are_undone_and_the_real_plan_applies_at_its_height(
    chain: MockChainServer,
    control: ChainControl,
    registries: Registries,
    bus: Bus,
    nats_settings: NatsSettings,
) -> None:
    genesis = "v3.0.8"
    settings = watcher_settings(chain, nats_settings, version_snapshot_interval_s=SNAPSHOT_INTERVAL_S)
    await control.advance(3)
    _, base, _ = registries.start()
    async with running_watcher(settings):

        async def synced() -> bool:
            state = await get_state(base)
            return _s(state.current_version) == genesis and state.last_height >= 3

        await eventually(synced, timeout=20, message="the registry synced to the chain")

        # 1. A hand-typed plan and block far above the chain: the registry is moved ahead.
        await publish_raw(
            bus,
            [
                ("chain.upgrade.scheduled", '{"height": 10027, "node_version": "v3.0.6"}'),
                ("chain.block", '{"height": 10027}'),
            ],
        )

        async def forged() -> bool:
            return _s((await get_state(base)).current_version) == "v3.0.6"

        await eventually(forged, message="the forged switch (the registry cannot know yet)")
        state = await until_corrected_by_the_next_snapshot(
            bus, control, base, await last_snapshot_seq(bus), genesis
        )
        assert state.last_height < 10027 and not [p for p in state.pending if p.height == 10027]

        # 2. A hand-typed wrong chain.version: undone by the next real snapshot too.
        await publish_raw(bus, [("chain.version", '{"current_version": "v6.6.6", "height": 2}')])

        async def misled() -> bool:
            return _s((await get_state(base)).current_version) == "v6.6.6"

        await eventually(misled, message="the hand-typed snapshot taken at its word")
        await until_corrected_by_the_next_snapshot(bus, control, base, await last_snapshot_seq(bus), genesis)

        # 3. A real plan, through governance: it applies exactly at its height.
        height = await control.height()
        plan_height = height + 6  # the vote takes 3 blocks
        await control.propose((plan_height, "v3.0.9"))
        while (current := await control.height()) < plan_height:
            await control.advance(1)
            current += 1

            async def caught_up(h: int = current) -> bool:
                return (await get_state(base)).last_height >= h

            await eventually(caught_up, timeout=10, message=f"the registry at block {current}")
            expected = "v3.0.9" if current >= plan_height else genesis
            assert _s((await get_state(base)).current_version) == expected, f"at block {current}"

    switches = [(c.transition_id, c.height, str(c.current)) for c in await version_changed_messages(bus)]
    assert switches[-1][1:] == (plan_height, "v3.0.9"), switches
    assert not any(h == 10027 and v == "v3.0.9" for _, h, v in switches)
