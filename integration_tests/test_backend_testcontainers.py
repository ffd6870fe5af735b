"""The container backend itself: our bus against the pinned NATS image, when Docker is here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration_tests.backends import ContainerNats, require_engine
from shared.bus import CHAIN_STREAM, Bus
from shared.events import BlockCommitted
from shared.settings import NatsSettings


@pytest.fixture
def container_nats(tmp_path: Path) -> Iterator[ContainerNats]:
    require_engine("testcontainers backend")
    nats = ContainerNats(tmp_path / "nats").start()
    yield nats
    nats.stop()


async def test_streams_and_dedup_on_the_pinned_nats_image(container_nats: ContainerNats) -> None:
    bus = await Bus.connect(NatsSettings(url=container_nats.url), "it")
    try:
        await bus.ensure_streams()
        first = await bus.publish(BlockCommitted(height=1))
        again = await bus.publish(BlockCommitted(height=1))
        assert not first.duplicate and again.duplicate
        assert (await bus.js.stream_info(CHAIN_STREAM.name)).state.messages == 1
    finally:
        await bus.close()
