"""Nothing acknowledged is lost and nothing acknowledged is redone, across process and server deaths."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.conftest import REPO_ROOT
from integration_tests.support import eventually
from shared.bus import CHAIN_STREAM, Bus
from shared.consumer import ConsumerSpec, Delivery, DurableConsumer, ensure_consumer
from shared.events import BlockCommitted, Event


def handled(out: Path) -> list[int]:
    if not out.exists():
        return []
    return [int(line.split()[1]) for line in out.read_text().splitlines() if line.strip()]


def deliveries(out: Path) -> dict[int, int]:
    """Height -> how many times the server had delivered it when it was handled."""
    return {
        int(h): int(n) for _, h, n in (line.split() for line in out.read_text().splitlines() if line.strip())
    }


class ConsumerProcess:
    def __init__(self, url: str, out: Path, hold_at: int | None = None) -> None:
        args = [sys.executable, "-m", "integration_tests.procs.record_consumer", url, str(out)]
        if hold_at is not None:
            args.append(str(hold_at))
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def processes() -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def publish_blocks(bus: Bus, heights: range) -> None:
    for height in heights:
        await bus.publish(BlockCommitted(height=height))


async def ack_floor(bus: Bus, durable: str) -> int:
    return (await bus.js.consumer_info(CHAIN_STREAM.name, durable)).ack_floor.stream_seq


async def test_killed_consumer_resumes_after_its_last_ack(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path, processes: list[ConsumerProcess]
) -> None:
    first_run, second_run = tmp_path / "run1.txt", tmp_path / "run2.txt"
    await publish_blocks(bus, range(1, 101))

    processes.append(ConsumerProcess(nats_server.url, first_run))
    await eventually(lambda: len(handled(first_run)) == 100, timeout=20, message="first run handled 1..100")
    await eventually(lambda: _floor(bus, "recorder", 100), message="server recorded acks up to 100")
    processes[-1].kill()

    await publish_blocks(bus, range(101, 201))  # arrives while no consumer runs
    processes.append(ConsumerProcess(nats_server.url, second_run))
    await eventually(
        lambda: len(handled(second_run)) == 100, timeout=20, message="second run handled 101..200"
    )

    assert handled(first_run) == list(range(1, 101))
    assert handled(second_run) == list(range(101, 201))  # resumed exactly where it stopped


async def test_message_in_flight_at_the_kill_is_redelivered(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path, processes: list[ConsumerProcess]
) -> None:
    first_run, second_run = tmp_path / "run1.txt", tmp_path / "run2.txt"
    await publish_blocks(bus, range(1, 61))

    processes.append(ConsumerProcess(nats_server.url, first_run, hold_at=40))
    await eventually(lambda: handled(first_run)[-1:] == [40], timeout=20, message="handler holding block 40")
    await eventually(lambda: _floor(bus, "recorder", 39), message="acks up to 39 recorded")
    processes[-1].kill()

    processes.append(ConsumerProcess(nats_server.url, second_run))
    await eventually(
        lambda: {40, 60} <= set(handled(second_run)),
        timeout=20,
        message="second run handled 60 and redelivered 40",
    )

    assert handled(first_run) == list(range(1, 41))
    # 40 again (never acked; redelivered once its ack wait ran out), nothing acked before it.
    assert sorted(handled(second_run)) == list(range(40, 61))
    assert deliveries(second_run)[40] >= 2


async def test_graceful_server_restart_loses_no_acknowledged_message(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    acks = [await bus.publish(BlockCommitted(height=h)) for h in range(1, 51)]
    nats_server.restart()
    await eventually(bus.jetstream_ready, timeout=20, message="client reconnected and JetStream answering")

    info = await bus.js.stream_info(CHAIN_STREAM.name)
    assert info.state.messages == 50
    for ack in acks:
        stored = await bus.js.get_msg(CHAIN_STREAM.name, ack.seq)
        assert stored.data == BlockCommitted(height=ack.seq).to_json()


async def test_killed_server_loses_no_acknowledged_message(bus: Bus, nats_server: EmbeddedNats) -> None:
    for h in range(1, 51):
        await bus.publish(BlockCommitted(height=h))
    nats_server.kill()
    nats_server.start()
    await eventually(bus.jetstream_ready, timeout=20, message="client reconnected and JetStream answering")
    info = await bus.js.stream_info(CHAIN_STREAM.name)
    assert info.state.messages == 50


async def test_consumer_loop_continues_across_server_restart(bus: Bus, nats_server: EmbeddedNats) -> None:
    seen: list[int] = []

    async def record(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, BlockCommitted)
        seen.append(event.height)

    spec = ConsumerSpec(CHAIN_STREAM.name, "survivor", ("chain.block",), ack_wait_s=2, fetch_timeout_s=0.5)
    await ensure_consumer(bus, spec)
    task = asyncio.create_task(DurableConsumer(bus, spec, record).run())
    try:
        await publish_blocks(bus, range(1, 26))
        await eventually(lambda: len(seen) == 25, message="25 blocks before the restart")
        await eventually(lambda: _floor(bus, "survivor", 25), message="acks recorded before the restart")

        nats_server.restart()
        await eventually(
            bus.jetstream_ready, timeout=20, message="client reconnected and JetStream answering"
        )
        for height in range(26, 51):
            await bus.publish(BlockCommitted(height=height), retry_for_s=10)
        await eventually(lambda: len(seen) >= 50, timeout=20, message="25 blocks after the restart")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == list(range(1, 51))


async def _floor(bus: Bus, durable: str, seq: int) -> bool:
    return await ack_floor(bus, durable) == seq
