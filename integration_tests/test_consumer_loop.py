"""The durable consumer loop against a real nats-server, fed raw bytes as the NATS CLI would send."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from integration_tests.conftest import REPO_ROOT
from integration_tests.support import eventually
from shared.bus import ERRORS_STREAM, Bus
from shared.consumer import ConsumerSpec, Delivery, DurableConsumer, ensure_consumer
from shared.events import EVENT_TYPES, BlockCommitted, Event

ALL_EVENT_SUBJECTS = tuple(cls.SUBJECT for cls in EVENT_TYPES)
STREAM_OF = {"chain": "CHAIN", "version": "VERSION", "broker": "BROKER"}


def docs_examples() -> list[tuple[str, bytes]]:
    """Every `nats [--context C] pub SUBJECT 'PAYLOAD'` line in docs/events.md, as (subject, raw bytes)."""
    examples = []
    for line in (REPO_ROOT / "docs" / "events.md").read_text().splitlines():
        words = shlex.split(line) if line.startswith("nats ") else []
        if "pub" in words and len(words) == words.index("pub") + 3:
            subject, payload = words[words.index("pub") + 1 :]
            examples.append((subject, payload.encode()))
    return examples


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Event, Delivery]] = []

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        self.events.append((event, delivery))


@asynccontextmanager
async def running(bus: Bus, stream: str, handler: Callable[[Event, Delivery], Awaitable[None]],
                  filters: tuple[str, ...]) -> AsyncIterator[DurableConsumer]:  # fmt: skip
    spec = ConsumerSpec(stream, f"test-{stream.lower()}", filters, ack_wait_s=2)
    await ensure_consumer(bus, spec)  # provisioning's job; services only bind
    consumer = DurableConsumer(bus, spec, handler)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def rejected(bus: Bus) -> list[dict[str, object]]:
    info = await bus.js.stream_info(ERRORS_STREAM.name)
    if info.state.messages == 0:
        return []
    seqs = range(info.state.first_seq, info.state.last_seq + 1)
    return [json.loads((await bus.js.get_msg(ERRORS_STREAM.name, seq)).data or b"{}") for seq in seqs]


def test_docs_have_an_example_for_every_event() -> None:
    subjects = {subject for subject, _ in docs_examples()}
    assert subjects == set(ALL_EVENT_SUBJECTS)


async def test_every_docs_example_is_accepted(bus: Bus) -> None:
    examples = docs_examples()
    recorders = {stream: Recorder() for stream in STREAM_OF.values()}
    for subject, payload in examples:
        await bus.nc.publish(subject, payload)  # plain publish, no Nats-Msg-Id: exactly `nats pub`
    await bus.nc.flush()
    async with running(bus, "CHAIN", recorders["CHAIN"], ("chain.>",)), \
            running(bus, "VERSION", recorders["VERSION"], ("version.>",)), \
            running(bus, "BROKER", recorders["BROKER"], ("broker.>",)):  # fmt: skip
        await eventually(
            lambda: sum(len(r.events) for r in recorders.values()) == len(examples),
            message=f"{len(examples)} docs examples handled",
        )
    received = [(d.subject, e) for r in recorders.values() for e, d in r.events]
    assert sorted(s for s, _ in received) == sorted(s for s, _ in examples)
    assert all(s == type(e).SUBJECT for s, e in received)
    assert await rejected(bus) == []


MALFORMED = [
    ("chain.block", b'{"height": 120', "json"),
    ("chain.block", b"\xff\xfe not utf-8", "json"),
    ("chain.block", b'{"height": "120"}', "validation"),
    ("chain.block", b'{"height": 120, "extra": true}', "validation"),
    ("chain.block", b'{"height": 0}', "validation"),
    ("chain.block", b'{"height": -5}', "validation"),
    ("chain.block", b"[120]", "validation"),
    ("chain.upgrade.scheduled", b'{"height": 5, "node_version": "../v3.0.8"}', "validation"),
    ("chain.upgrade.scheduled", b'{"height": 5, "node_version": "v3.0"}', "validation"),
    ("chain.upgrade.scheduled", b'{"height": 5}', "validation"),
    ("chain.version", b'{"current_version": ""}', "validation"),
    ("chain.surprise", b'{"height": 5}', "unknown_subject"),
]


async def test_malformed_payloads_go_to_errors_and_change_nothing(bus: Bus) -> None:
    recorder = Recorder()
    for subject, payload, _ in MALFORMED:
        await bus.nc.publish(subject, payload)
    await bus.nc.publish("chain.block", b'{"height": 121}')  # a valid one after them still gets through
    await bus.nc.flush()

    async with running(bus, "CHAIN", recorder, ("chain.>",)):
        await eventually(lambda: len(recorder.events) == 1, message="the valid block handled")
        await eventually(lambda: _count_errors(bus, len(MALFORMED)), message="every rejection recorded")

    assert [e for e, _ in recorder.events] == [BlockCommitted(height=121)]
    records = await rejected(bus)
    assert [(r["subject"], r["reason"]) for r in records] == [(s, reason) for s, _, reason in MALFORMED]
    assert all(r["service"] == "it" and r["stream"] == "CHAIN" and r["detail"] for r in records)
    assert records[2]["payload"] == '{"height": "120"}'
    assert "greater than 0" in str(records[4]["detail"])
    errors_subjects = {(await bus.js.get_msg(ERRORS_STREAM.name, 1)).subject}
    assert errors_subjects == {"errors.it"}
    invalid = bus.metrics.sample(
        "mlnode_upgrade_events_invalid_total", subject="chain.block", reason="validation"
    )
    assert invalid == 5
    consumer = await bus.js.consumer_info("CHAIN", "test-chain")
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0


async def _count_errors(bus: Bus, expected: int) -> bool:
    return (await bus.js.stream_info(ERRORS_STREAM.name)).state.messages == expected


async def test_a_failing_handler_gets_the_message_again(bus: Bus) -> None:
    attempts: list[int] = []

    async def flaky(event: Event, delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        if delivery.num_delivered < 3:
            raise RuntimeError("transient")

    await bus.publish(BlockCommitted(height=5))
    async with running(bus, "CHAIN", flaky, ("chain.block",)):
        await eventually(lambda: attempts[-1:] == [3], message="third delivery handled")
        await eventually(lambda: _acked(bus), message="message acked after success")
    assert attempts == [1, 2, 3]
    assert bus.metrics.sample("mlnode_upgrade_handler_errors_total", subject="chain.block") == 2


async def _acked(bus: Bus) -> bool:
    info = await bus.js.consumer_info("CHAIN", "test-chain")
    return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1
