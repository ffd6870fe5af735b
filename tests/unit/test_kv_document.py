"""The one persisted-document primitive: format versions, compare-and-swap, re-deciding on conflict."""

from __future__ import annotations

import asyncio
import gc
import zlib
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import BaseModel, ConfigDict

from shared.kv_document import (
    COMPRESSED_MARK,
    MAX_DOCUMENT_BYTES,
    DocumentFormatError,
    KvDocument,
    ModelCodec,
    OptionalCodec,
)
from shared.kv_store import StaleRevisionError
from tests.unit.kv_fakes import MemoryKv


class Counter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = 0


CODEC = ModelCodec(Counter, version=1)


def test_the_format_is_written_and_older_documents_are_read() -> None:
    assert CODEC.encode(Counter(n=3)) == b'{"format":1,"n":3}'
    assert CODEC.decode(b'{"n":4}') == Counter(n=4)  # written before formats existed: format 0
    with pytest.raises(DocumentFormatError, match="stored format 2, this version reads up to 1"):
        CODEC.decode(b'{"format":2,"n":1}')
    with pytest.raises(DocumentFormatError, match="not JSON"):
        CODEC.decode(b"{")
    optional = OptionalCodec(CODEC)
    assert optional.decode(optional.encode(None)) is None
    assert optional.decode(optional.encode(Counter(n=1))) == Counter(n=1)


async def test_mutate_writes_with_the_revision_it_read_and_re_decides_on_conflict() -> None:
    store = MemoryKv()
    conflicts: list[int] = []
    doc = KvDocument(store, "c", CODEC, Counter(), on_conflict=lambda: conflicts.append(1))  # type: ignore[arg-type]
    assert await doc.mutate(lambda c: Counter(n=c.n + 1)) == Counter(n=1)
    store.interfere("c", CODEC.encode(Counter(n=10)))  # another writer
    assert await doc.mutate(lambda c: Counter(n=c.n + 1)) == Counter(n=11)  # applied to what it wrote
    assert conflicts == [1] and doc.revision == 3
    assert await doc.mutate(lambda c: c) == Counter(n=11) and store.writes == 2  # unchanged: no write


async def test_a_writer_that_always_loses_gives_up() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "c", CODEC, Counter(), max_attempts=3)  # type: ignore[arg-type]

    def lose(c: Counter) -> Counter:
        store.interfere("c", CODEC.encode(Counter(n=c.n + 100)))
        return Counter(n=c.n + 1)

    with pytest.raises(StaleRevisionError):
        await doc.mutate(lose)


class Bag(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    items: tuple[str, ...] = ()


BAG = ModelCodec(Bag, version=1)


def add(item: str) -> Callable[[Bag], Bag]:
    return lambda bag: Bag(items=(*bag.items, item))


def refuse(bag: Bag) -> Bag:
    raise ValueError("not mine")


def stored(store: MemoryKv, key: str = "b") -> Bag:
    return BAG.decode(store.values[key].value)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def let_one_write_through(store: MemoryKv) -> None:
    """The writes waiting at the gate go on; the next ones wait again."""
    assert store.gate is not None
    store.gate.set()
    store.gate.clear()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[str]]:
    """What the loop's exception handler got ("Future exception was never retrieved", ...)."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, context: errors.append(context["message"]))
    yield errors
    loop.set_exception_handler(None)


async def a_write_held_at_the_gate(store: MemoryKv, doc: KvDocument[Bag]) -> asyncio.Task[Bag]:
    """`a` being written (its write paused): what is mutated now queues up behind it."""
    store.gate = asyncio.Event()
    first = asyncio.create_task(doc.mutate(add("a")))
    await until(lambda: store.paused == 1)
    return first


async def test_concurrent_mutations_are_written_together_and_each_caller_sees_its_own() -> None:
    store = MemoryKv()
    store.yield_on_write = True  # a write gives the loop a turn, as one over a socket does
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    names = [f"i{n}" for n in range(50)]
    results = await asyncio.gather(*(doc.mutate(add(name)) for name in names))
    assert 1 < store.writes <= 3  # the first alone, the 49 queued behind it together
    for name, result in zip(names, results, strict=True):
        assert name in result.items
    assert stored(store).items == tuple(names)  # applied in the order of the calls
    assert results[-1] == stored(store) and doc.revision == store.writes


async def test_a_mutation_that_gives_up_fails_alone_and_the_rest_of_its_group_is_written() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    group = [asyncio.create_task(doc.mutate(fn)) for fn in (add("b"), refuse, add("c"))]
    await asyncio.sleep(0)  # all three queued behind `a`
    assert store.gate is not None
    store.gate.set()
    assert await first == Bag(items=("a",))
    b, refused, c = await asyncio.gather(*group, return_exceptions=True)
    assert isinstance(refused, ValueError)
    assert b == c == Bag(items=("a", "b", "c")) == stored(store)
    assert store.writes == 2  # `a`, then b and c together


async def test_a_conflict_on_a_groups_write_re_applies_the_group_on_the_other_writers_value() -> None:
    store = MemoryKv()
    conflicts: list[int] = []
    doc = KvDocument(store, "b", BAG, Bag(), on_conflict=lambda: conflicts.append(1))  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    applied: list[str] = []

    def counted(item: str) -> Callable[[Bag], Bag]:
        def fn(bag: Bag) -> Bag:
            applied.append(item)
            return Bag(items=(*bag.items, item))

        return fn

    group = [asyncio.create_task(doc.mutate(counted(item))) for item in "bcd"]
    await asyncio.sleep(0)
    let_one_write_through(store)
    assert await first == Bag(items=("a",))
    await until(lambda: store.paused == 1)  # b, c and d being written together
    assert applied == ["b", "c", "d"]
    store.interfere("b", BAG.encode(Bag(items=("a", "x"))))  # another writer gets there first
    assert store.gate is not None
    store.gate.set()
    results = await asyncio.gather(*group)
    assert results == [Bag(items=("a", "x", "b", "c", "d"))] * 3 and stored(store) == results[0]
    assert applied == ["b", "c", "d"] * 2  # the whole group decided again, in order
    assert conflicts == [1] and store.writes == 2 and doc.revision == 3


async def test_a_store_error_fails_the_whole_group() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    group = [asyncio.create_task(doc.mutate(add(item))) for item in "bc"]
    await asyncio.sleep(0)
    let_one_write_through(store)
    assert await first == Bag(items=("a",))
    await until(lambda: store.paused == 1)  # b and c being written together
    store.failure = OSError("store down")
    let_one_write_through(store)
    results = await asyncio.gather(*group, return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    assert stored(store) == Bag(items=("a",)) and store.writes == 1


async def test_losing_every_attempt_fails_the_whole_group() -> None:
    store = MemoryKv()
    conflicts: list[int] = []
    doc = KvDocument(store, "b", BAG, Bag(), max_attempts=2, on_conflict=lambda: conflicts.append(1))  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    group = [asyncio.create_task(doc.mutate(add(item))) for item in "bc"]
    await asyncio.sleep(0)
    let_one_write_through(store)
    assert await first == Bag(items=("a",))
    await until(lambda: store.paused == 1)  # b and c being written together
    store.interfere("b", BAG.encode(Bag(items=("x",))))
    let_one_write_through(store)
    await until(lambda: conflicts == [1])  # decided again on x, and held at the gate again
    store.interfere("b", BAG.encode(Bag(items=("y",))))
    let_one_write_through(store)
    results = await asyncio.gather(*group, return_exceptions=True)
    assert all(isinstance(r, StaleRevisionError) for r in results)
    assert conflicts == [1, 1] and stored(store) == Bag(items=("y",)) and store.writes == 1


async def test_the_writer_of_a_group_cancelled_mid_write_leaves_the_rest_to_the_next(
    loop_errors: list[str],
) -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    group = {item: asyncio.create_task(doc.mutate(add(item))) for item in "bcd"}
    await asyncio.sleep(0)
    let_one_write_through(store)
    assert await first == Bag(items=("a",))
    await until(lambda: store.paused == 1)  # b holds the lock and writes b, c and d
    group["b"].cancel()
    await asyncio.sleep(0)
    assert store.gate is not None
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await group["b"]
    assert await group["c"] == await group["d"] == Bag(items=("a", "c", "d")) == stored(store)
    assert store.writes == 2
    del first, group
    gc.collect()
    assert loop_errors == []


async def test_a_cancelled_member_whose_mutation_gives_up_leaves_no_unretrieved_error(
    loop_errors: list[str],
) -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    b = asyncio.create_task(doc.mutate(add("b")))
    gone = asyncio.create_task(doc.mutate(refuse))
    await asyncio.sleep(0)
    let_one_write_through(store)
    assert await first == Bag(items=("a",))
    await until(lambda: store.paused == 1)  # b writes b with the refusal in its group
    gone.cancel()  # waiting for the lock, its mutation already taken into b's group
    await asyncio.sleep(0)
    assert store.gate is not None
    store.gate.set()
    assert await b == Bag(items=("a", "b"))
    assert gone.cancelled()
    del first, b, gone
    gc.collect()
    assert loop_errors == []


async def test_a_mutation_cancelled_before_any_write_took_it_is_not_applied_later() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag())  # type: ignore[arg-type]
    first = await a_write_held_at_the_gate(store, doc)
    gone = asyncio.create_task(doc.mutate(add("gone")))
    await asyncio.sleep(0)  # queued behind `a`, waiting for the lock
    gone.cancel()
    await asyncio.sleep(0)
    assert store.gate is not None
    store.gate.set()
    assert await first == Bag(items=("a",))
    assert gone.cancelled() and stored(store) == Bag(items=("a",))
    assert await doc.mutate(add("later")) == Bag(items=("a", "later"))


# --- large documents are stored deflated -----------------------------------------------------------


class Fleet(BaseModel):
    model_config = ConfigDict(frozen=True)

    nodes: tuple[str, ...] = ()


FLEET = ModelCodec(Fleet)


def test_a_small_document_stays_plain_json() -> None:
    assert FLEET.encode(Fleet(nodes=("a",))) == b'{"format":1,"nodes":["a"]}'


def test_a_document_over_the_threshold_is_stored_deflated_under_nats_message_limit() -> None:
    # Five thousand nodes' configs are megabytes of JSON; NATS refuses a message over 1 MB.
    fleet = Fleet(
        nodes=tuple(f'{{"id":"node-{i}","host":"10.0.{i % 250}.{i % 7}","port":8080}}' for i in range(20_000))
    )
    data = FLEET.encode(fleet)
    assert data.startswith(COMPRESSED_MARK) and len(data) < 1024 * 1024
    assert FLEET.decode(data) == fleet
    assert OptionalCodec(FLEET).decode(data) == fleet


def test_a_plain_document_written_before_compression_still_reads() -> None:
    assert FLEET.decode(b'{"format":1,"nodes":["a","b"]}') == Fleet(nodes=("a", "b"))


def test_a_corrupt_or_oversized_compressed_document_is_a_format_error() -> None:
    with pytest.raises(DocumentFormatError, match="compressed, but not readable"):
        FLEET.decode(COMPRESSED_MARK + b"not deflate")
    bomb = COMPRESSED_MARK + zlib.compress(b'{"nodes":[' + b" " * (MAX_DOCUMENT_BYTES + 1) + b"]}")
    with pytest.raises(DocumentFormatError, match="once inflated"):
        FLEET.decode(bomb)


async def test_a_large_document_round_trips_through_the_store() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "fleet", FLEET, Fleet())  # type: ignore[arg-type]
    fleet = Fleet(nodes=tuple(f"node-{i}" * 5 for i in range(10_000)))
    await doc.mutate(lambda _: fleet)
    fresh = KvDocument(store, "fleet", FLEET, Fleet())  # type: ignore[arg-type]
    assert await fresh.load() == fleet


async def test_a_minimum_interval_gathers_the_mutations_of_that_time_into_one_write() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag(), min_interval_s=0.05)  # type: ignore[arg-type]
    await doc.mutate(add("first"))  # nothing written before: at once
    assert store.writes == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(doc.mutate(add(str(i))) for i in range(10)))
    assert store.writes == 2  # the ten waited out the interval together
    assert loop.time() - started >= 0.04
    assert results[-1] == stored(store) and len(stored(store).items) == 11


async def test_an_at_once_mutation_cuts_the_interval_short_for_the_whole_group() -> None:
    store = MemoryKv()
    doc = KvDocument(store, "b", BAG, Bag(), min_interval_s=5.0)  # type: ignore[arg-type]
    await doc.mutate(add("first"))
    waiting = asyncio.create_task(doc.mutate(add("later")))  # would wait out the 5 s
    await until(lambda: bool(doc._queued))
    loop = asyncio.get_running_loop()
    started = loop.time()
    urgent = await doc.mutate(add("now"), at_once=True)
    assert loop.time() - started < 1.0
    assert await waiting == urgent == stored(store) == Bag(items=("first", "later", "now"))
    assert store.writes == 2
