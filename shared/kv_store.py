"""Compare-and-swap storage on a JetStream KV bucket.

Every write names the revision it read; a writer that read a stale revision is refused, so a
second instance started by mistake cannot overwrite state it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue


class StaleRevisionError(RuntimeError):
    """The key changed since it was read (or exists, for a create): read again and decide again."""

    def __init__(self, key: str, expected: int) -> None:
        what = "to be absent" if expected == 0 else f"at revision {expected}"
        super().__init__(f"KV key {key!r} was expected {what} but another writer changed it")
        self.key = key
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Versioned:
    value: bytes
    revision: int


class VersionedStore:
    """A KV bucket seen as (value, revision) pairs with conditional writes only."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, key: str) -> Versioned | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Versioned(value=entry.value, revision=entry.revision)

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key has never been written (or was deleted)."""
        try:
            return await self.kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise StaleRevisionError(key, 0) from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write only if the key is still at `revision`; returns the new revision."""
        try:
            return await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise StaleRevisionError(key, revision) from None

    async def write(self, key: str, value: bytes, revision: int | None) -> int:
        """`create` when `revision` is None (nothing was read), else `update`."""
        if revision is None:
            return await self.create(key, value)
        return await self.update(key, value, revision)
