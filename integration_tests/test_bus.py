"""Publishing and topology against a real nats-server."""

from __future__ import annotations

import pytest

from shared.bus import CHAIN_STREAM, Bus, BusError, StreamSpec
from shared.events import BlockCommitted, UpgradeScheduled
from shared.settings import NatsSettings
from shared.versions import MLNodeVersion


async def test_same_msg_id_is_stored_once(bus: Bus) -> None:
    event = UpgradeScheduled(height=12000, node_version=MLNodeVersion("v3.0.8"))
    first = await bus.publish(event)
    second = await bus.publish(event)
    info = await bus.js.stream_info(CHAIN_STREAM.name)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.seq == first.seq
    assert info.state.messages == 1
    stored = await bus.js.get_msg(CHAIN_STREAM.name, first.seq)
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == "plan-12000-v3.0.8"


async def test_different_ids_are_stored_separately(bus: Bus) -> None:
    for height in (1, 2, 3):
        await bus.publish(BlockCommitted(height=height))
    await bus.publish(BlockCommitted(height=2))
    info = await bus.js.stream_info(CHAIN_STREAM.name)
    assert info.state.messages == 3


async def test_ensure_stream_is_idempotent_and_updates_config(bus: Bus) -> None:
    await bus.publish(BlockCommitted(height=7))
    await bus.ensure_streams()
    await bus.ensure_streams()
    # The same stream with a changed description and subjects is updated in place, keeping data.
    changed = StreamSpec(CHAIN_STREAM.name, ("chain.>", "chainx.>"), "changed")
    info = await bus.ensure_stream(changed)
    assert info.config.description == "changed"
    assert info.config.subjects == ["chain.>", "chainx.>"]
    assert info.state.messages == 1


async def test_stream_config_uses_file_storage_and_settings(bus: Bus) -> None:
    info = await bus.js.stream_info(CHAIN_STREAM.name)
    assert str(getattr(info.config.storage, "value", info.config.storage)) == "file"
    assert info.config.num_replicas == 1
    assert info.config.duplicate_window == pytest.approx(120.0)


async def test_impossible_stream_config_is_a_clear_error(bus: Bus) -> None:
    # Overlapping subjects with an existing stream cannot be created.
    with pytest.raises(BusError, match="cannot create stream OVERLAP"):
        await bus.ensure_stream(StreamSpec("OVERLAP", ("chain.block",), "overlaps CHAIN"))


async def test_connect_to_nothing_fails_clearly() -> None:
    settings = NatsSettings(url="nats://127.0.0.1:9", connect_timeout_s=0.2)
    with pytest.raises(BusError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:9"):
        await Bus.connect(settings, "it", give_up_after_s=0.5)
