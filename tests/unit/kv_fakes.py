"""`VersionedStore`'s contract in memory, for the units that persist documents."""

from __future__ import annotations

from shared.kv_store import StaleRevisionError, Versioned


class MemoryKv:
    """Revisions and conditional writes as JetStream KV does them; `interfere` is another writer."""

    def __init__(self) -> None:
        self.values: dict[str, Versioned] = {}
        self.writes = 0

    async def get(self, key: str) -> Versioned | None:
        return self.values.get(key)

    async def write(self, key: str, value: bytes, revision: int | None) -> int:
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
