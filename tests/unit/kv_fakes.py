"""`VersionedStore`'s contract in memory, for the units that persist documents."""

from __future__ import annotations

import asyncio

from shared.kv_store import StaleRevisionError, Versioned


class MemoryKv:
    """Revisions and conditional writes as JetStream KV does them; `interfere` is another writer.

    `yield_on_write` makes each write give the loop a turn first (a store over a socket); while
    `gate` is a cleared event, writes wait at it before they check the revision (`paused` of them);
    with `failure` set, a write raises it then (the store is down).
    """

    def __init__(self) -> None:
        self.values: dict[str, Versioned] = {}
        self.writes = 0
        self.yield_on_write = False
        self.gate: asyncio.Event | None = None
        self.paused = 0
        self.failure: Exception | None = None

    async def get(self, key: str) -> Versioned | None:
        return self.values.get(key)

    async def write(self, key: str, value: bytes, revision: int | None) -> int:
        if self.yield_on_write:
            await asyncio.sleep(0)
        if self.gate is not None:
            self.paused += 1
            try:
                await self.gate.wait()
            finally:
                self.paused -= 1
        if self.failure is not None:
            raise self.failure
        current = self.values.get(key)
        if (current.revision if current else None) != revision:
            raise StaleRevisionError(key, revision or 0)
        new = (current.revision if current else 0) + 1
        self.values[key] = Versioned(value, new)
        self.writes += 1
        return new

    def interfere(self, key: str, value: bytes) -> None:
        current = self.values.get(key)
        self.values[key] = Versioned(value, (current.revision if current else 0) + 1)
