"""A three-server JetStream cluster with replicated streams keeps working when one server dies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.embedded_nats import EmbeddedNatsCluster
from integration_tests.support import eventually
from shared.bus import CHAIN_STREAM, Bus
from shared.consumer import ConsumerSpec, Delivery, DurableConsumer, ensure_consumer
from shared.events import BlockCommitted, Event
from shared.settings import NatsSettings


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    with EmbeddedNatsCluster(tmp_path / "cluster", size=3) as c:
        yield c


async def test_replicated_streams_survive_a_killed_server(cluster: EmbeddedNatsCluster) -> None:
    settings = NatsSettings(url=cluster.url, replicas=3, connect_timeout_s=1.0, request_timeout_s=3.0)
    bus = await Bus.connect(settings, "it")
    try:
        await bus.ensure_streams()
        info = await bus.js.stream_info(CHAIN_STREAM.name)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2

        seen: list[int] = []

        async def record(event: Event, delivery: Delivery) -> None:
            assert isinstance(event, BlockCommitted)
            seen.append(event.height)

        spec = ConsumerSpec(
            CHAIN_STREAM.name, "survivor", ("chain.block",), ack_wait_s=2, fetch_timeout_s=0.5
        )
        await ensure_consumer(bus, spec)
        task = asyncio.create_task(DurableConsumer(bus, spec, record).run())
        try:
            for h in range(1, 51):
                await bus.publish(BlockCommitted(height=h), retry_for_s=10)
            await eventually(lambda: len(seen) >= 50, timeout=20, message="first 50 consumed")

            # Kill the stream's leader: the hardest case, a new leader must be elected.
            leader = (await bus.js.stream_info(CHAIN_STREAM.name)).cluster.leader  # type: ignore[union-attr]
            victim = next(s for s in cluster.servers if s.name == leader)
            victim.kill()

            for h in range(51, 101):
                await bus.publish(BlockCommitted(height=h), retry_for_s=30)
            await eventually(lambda: len(seen) >= 100, timeout=40, message="all 100 consumed after the kill")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Nothing lost, in order; a message in flight at the kill may come twice (at-least-once).
        assert list(dict.fromkeys(seen)) == list(range(1, 101))
        stream = await bus.js.stream_info(CHAIN_STREAM.name)
        assert stream.state.messages == 100
        assert stream.cluster is not None and stream.cluster.leader != leader
    finally:
        await bus.close()
