"""The measured model loads the staged switch plans with: the last few per (node, version)."""

from __future__ import annotations

from services.broker.load_times import KEEP, LoadTimeBook, LoadTimes
from shared.kv_document import MemoryDocument
from shared.versions import MLNodeVersion

V8 = MLNodeVersion("v3.0.8")
V9 = MLNodeVersion("v3.0.9")


def test_the_slowest_recent_load_is_the_expectation() -> None:
    times = LoadTimes().with_load("a", V8, 20.0).with_load("a", V8, 12.0).with_load("a", V9, 3.0)
    assert times.expected("a", V8) == 20.0 and times.expected("a", V9) == 3.0
    assert times.expected("b", V8) is None


def test_only_the_last_few_loads_are_kept() -> None:
    times = LoadTimes().with_load("a", V8, 100.0)
    for _ in range(KEEP):
        times = times.with_load("a", V8, 10.0)
    assert times.loads["a@v3.0.8"] == (10.0,) * KEEP and times.expected("a", V8) == 10.0


async def test_the_book_persists_each_load() -> None:
    doc = MemoryDocument(LoadTimes())
    book = LoadTimeBook(doc)
    await book.record("a", V8, 7.5)
    again = LoadTimeBook(doc)
    await again.load()
    assert again.times.expected("a", V8) == 7.5
    await again.forget("a")
    assert (await doc.load()).loads == {}
