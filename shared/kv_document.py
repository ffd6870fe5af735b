"""One persisted document: a typed value under one KV key, changed only by compare-and-swap.

Every service keeps its state this way. `mutate(fn)` applies `fn` to the latest value and writes
with the revision it read; when another writer got there first it re-reads and applies `fn`
again, up to `max_attempts`, then raises `StaleRevisionError`. `fn` may raise to give up (a
service that must be the only writer raises on seeing someone else's value). Writes from one
process are serialised per document, so concurrent mutations of one key never fight each other,
and they are grouped: the mutations that queue up while one write is under way are applied in
order and written together, once (a switch of a thousand nodes records its outcomes in a few
dozen writes of the record, not a thousand).

Each stored value carries a format version (`"format": N` in the JSON document), so a newer
layout can be told from an older one; a document without one is format 0, the layout written
before versions existed, and is read as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from shared.kv_store import StaleRevisionError, VersionedStore

__all__ = [
    "Codec",
    "Document",
    "DocumentFormatError",
    "KvDocument",
    "MemoryDocument",
    "ModelCodec",
    "OptionalCodec",
    "StaleRevisionError",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FORMAT_FIELD = "format"
COMPRESSED_MARK = b"deflate:"  # no JSON document starts with it
COMPRESS_FROM_BYTES = 64 * 1024
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024  # inflated: a bound, so a corrupt value cannot exhaust memory


class DocumentFormatError(ValueError):
    """A stored document this code cannot read: a newer format, or not the expected shape."""


class Codec(Protocol[T]):
    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


def _compressed(data: bytes) -> bytes:
    """Large documents are stored deflated behind a marker; small ones stay plain JSON."""
    if len(data) < COMPRESS_FROM_BYTES:
        return data
    return COMPRESSED_MARK + zlib.compress(data, 1)


def _inflated(data: bytes, what: str) -> bytes:
    if not data.startswith(COMPRESSED_MARK):
        return data
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(data[len(COMPRESSED_MARK) :], MAX_DOCUMENT_BYTES)
    except zlib.error as exc:
        raise DocumentFormatError(f"{what}: compressed, but not readable: {exc}") from None
    if inflater.unconsumed_tail:
        raise DocumentFormatError(f"{what}: more than {MAX_DOCUMENT_BYTES} bytes once inflated")
    return plain


class ModelCodec(Generic[M]):
    """A pydantic model as JSON with `"format": version` beside its fields.

    A document of `COMPRESS_FROM_BYTES` or more is stored deflated (marked `COMPRESSED_MARK`): a
    broker's node list or switch record for thousands of nodes is megabytes of JSON, over NATS's
    1 MB message limit, and deflates about tenfold. Smaller ones stay readable with `nats kv get`.
    """

    def __init__(self, model: type[M], version: int = 1) -> None:
        self.model = model
        self.version = version

    def encode(self, value: M) -> bytes:
        doc = {FORMAT_FIELD: self.version, **value.model_dump(mode="json")}
        return _compressed(json.dumps(doc, separators=(",", ":")).encode())

    def decode(self, data: bytes) -> M:
        data = _inflated(data, self.model.__name__)
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise DocumentFormatError(f"{self.model.__name__}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DocumentFormatError(f"{self.model.__name__}: not a JSON object")
        found = doc.pop(FORMAT_FIELD, 0)
        if not isinstance(found, int) or not 0 <= found <= self.version:
            raise DocumentFormatError(
                f"{self.model.__name__}: stored format {found!r}, this version reads up to {self.version}"
            )
        try:
            return self.model.model_validate(doc)
        except ValidationError as exc:
            raise DocumentFormatError(f"{self.model.__name__}: {exc}") from None


class OptionalCodec(Generic[M]):
    """A codec for `M | None`: None is stored as the JSON `null`."""

    def __init__(self, inner: ModelCodec[M]) -> None:
        self.inner = inner

    def encode(self, value: M | None) -> bytes:
        return b"null" if value is None else self.inner.encode(value)

    def decode(self, data: bytes) -> M | None:
        return None if data.strip() == b"null" else self.inner.decode(data)


class Document(Protocol[T]):
    async def load(self) -> T: ...

    async def mutate(self, fn: Callable[[T], T], *, at_once: bool = False) -> T: ...


class MemoryDocument(Generic[T]):
    """A document in memory: for unit tests, and the reference behaviour of `KvDocument`."""

    def __init__(self, value: T) -> None:
        self.value = value
        self.writes = 0

    async def load(self) -> T:
        return self.value

    async def mutate(self, fn: Callable[[T], T], *, at_once: bool = False) -> T:
        new = fn(self.value)
        if new != self.value:
            self.value = new
            self.writes += 1
        return new


class KvDocument(Generic[T]):
    """A document stored under `key`; an absent key reads as `default`."""

    def __init__(
        self,
        store: VersionedStore,
        key: str,
        codec: Codec[T],
        default: T,
        *,
        max_attempts: int = 10,
        on_conflict: Callable[[], Any] | None = None,
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.key = key
        self.codec = codec
        self.default = default
        self.max_attempts = max_attempts
        self.on_conflict = on_conflict
        # A big document written often (a switch record of thousands of nodes) waits this long
        # after its last write, gathering the mutations of that time into the next one.
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_write = float("-inf")
        self._urgent = False  # an `at_once` mutation is queued
        self._hurry = asyncio.Event()
        self._lock = asyncio.Lock()
        self._queued: list[tuple[Callable[[T], T], asyncio.Future[T]]] = []
        self._value: T = default
        self._revision: int | None = None
        self._loaded = False

    @property
    def revision(self) -> int | None:
        """The revision last read or written; None when the key was absent."""
        return self._revision

    async def _read(self) -> T:
        found = await self.store.get(self.key)
        self._loaded = True
        if found is None:
            self._value, self._revision = self.default, None
        else:
            self._value, self._revision = self.codec.decode(found.value), found.revision
        return self._value

    async def load(self) -> T:
        async with self._lock:
            return await self._read()

    async def mutate(self, fn: Callable[[T], T], *, at_once: bool = False) -> T:
        """`fn` applied to the latest value and written; returns the value as written.

        That value includes the mutations grouped into the same write after this one. `at_once`
        skips the minimum interval (a write something waits on: a switch's record before any
        node is touched).
        """
        mine: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, mine))
        if at_once:
            self._urgent = True
            self._hurry.set()  # a holder waiting out the interval writes now, this one with it
        try:
            async with self._lock:
                if not mine.done():  # else an earlier holder of the lock wrote it with its own
                    wait = self._last_write + self.min_interval_s - self.clock()
                    if wait > 0 and not self._urgent:
                        self._hurry.clear()
                        with contextlib.suppress(TimeoutError):  # those queued meanwhile join it
                            await asyncio.wait_for(self._hurry.wait(), wait)
                    batch, self._queued = self._queued, []
                    self._urgent = False
                    try:
                        await self._write_group(batch)
                    except asyncio.CancelledError:
                        # Cut short: the next holder writes what is left. If the cut write landed,
                        # its CAS fails and the rest is applied again on the stored value, so a
                        # mutation may be applied twice there: mutations must be idempotent.
                        self._queued[:0] = [
                            item for item in batch if item[1] is not mine and not item[1].done()
                        ]
                        raise
        except asyncio.CancelledError:
            self._abandon(mine)
            raise
        return mine.result()

    def _abandon(self, mine: asyncio.Future[T]) -> None:
        """A cancelled caller: its mutation is dropped if no write took it yet."""
        if mine.done():
            if not mine.cancelled():
                mine.exception()  # retrieved: the caller is gone, the outcome stays as written
            return
        for index, (_, future) in enumerate(self._queued):
            if future is mine:
                del self._queued[index]  # as if it was never asked for
                return
        mine.add_done_callback(_retrieve)  # a group being written holds it: it lands or fails unread

    async def _write_group(self, batch: list[tuple[Callable[[T], T], asyncio.Future[T]]]) -> None:
        """Apply and write the batch; every future gets the value written or the error."""
        try:
            if not self._loaded:
                await self._read()
            for _ in range(self.max_attempts):
                new = self._value
                refused: dict[int, Exception] = {}
                for index, (fn, _) in enumerate(batch):
                    try:
                        new = fn(new)
                    except Exception as exc:  # this mutation gives up; the others still apply
                        refused[index] = exc
                if new != self._value:
                    data = self.codec.encode(new)
                    try:
                        self._revision = await self.store.write(self.key, data, self._revision)
                    except StaleRevisionError:
                        if self.on_conflict is not None:
                            self.on_conflict()
                        await self._read()  # another writer: decide again on what it wrote
                        continue
                    self._value = new
                    self._last_write = self.clock()
                for index, (_, future) in enumerate(batch):
                    if index in refused:
                        future.set_exception(refused[index])
                    else:
                        future.set_result(new)
                return
            raise StaleRevisionError(self.key, self._revision or 0)
        except Exception as exc:  # the store failed, or CAS lost every attempt: all of them fail
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
