"""The one persisted-document primitive: format versions, compare-and-swap, re-deciding on conflict."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from shared.kv_document import DocumentFormatError, KvDocument, ModelCodec, OptionalCodec
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
