"""One persisted document: a typed value under one KV key, changed only by compare-and-swap.

Every service keeps its state this way. `mutate(fn)` applies `fn` to the latest value and writes
with the revision it read; when another writer got there first it re-reads and applies `fn`
again, up to `max_attempts`, then raises `StaleRevisionError`. `fn` may raise to give up (a
service that must be the only writer raises on seeing someone else's value). Writes from one
process are serialised per document, so concurrent mutations of one key never fight each other.

Each stored value carries a format version (`"format": N` in the JSON document), so a newer
layout can be told from an older one; a document without one is format 0, the layout written
before versions existed, and is read as such.
"""

from __future__ import annotations

import asyncio
import json
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


class DocumentFormatError(ValueError):
    """A stored document this code cannot read: a newer format, or not the expected shape."""


class Codec(Protocol[T]):
    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


class ModelCodec(Generic[M]):
    """A pydantic model as JSON with `"format": version` beside its fields."""

    def __init__(self, model: type[M], version: int = 1) -> None:
        self.model = model
        self.version = version

    def encode(self, value: M) -> bytes:
        doc = {FORMAT_FIELD: self.version, **value.model_dump(mode="json")}
        return json.dumps(doc, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> M:
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

    async def mutate(self, fn: Callable[[T], T]) -> T: ...


class MemoryDocument(Generic[T]):
    """A document in memory: for unit tests, and the reference behaviour of `KvDocument`."""

    def __init__(self, value: T) -> None:
        self.value = value
        self.writes = 0

    async def load(self) -> T:
        return self.value

    async def mutate(self, fn: Callable[[T], T]) -> T:
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
    ) -> None:
        self.store = store
        self.key = key
        self.codec = codec
        self.default = default
        self.max_attempts = max_attempts
        self.on_conflict = on_conflict
        self._lock = asyncio.Lock()
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

    async def mutate(self, fn: Callable[[T], T]) -> T:
        async with self._lock:
            if not self._loaded:
                await self._read()
            for _ in range(self.max_attempts):
                new = fn(self._value)
                if new == self._value:
                    return new
                try:
                    self._revision = await self.store.write(self.key, self.codec.encode(new), self._revision)
                except StaleRevisionError:
                    if self.on_conflict is not None:
                        self.on_conflict()
                    await self._read()  # another writer: decide again on what it wrote
                    continue
                self._value = new
                return new
            raise StaleRevisionError(self.key, self._revision or 0)
