"""What the broker persists in its JetStream KV bucket: nodes, pending stops, transition progress.

Each is one JSON document under one key, changed only by compare-and-swap: `mutate(fn)` applies
`fn` to the latest value and writes with the revision it read, re-reading and re-applying when
someone else wrote first. Writes from this process are serialised per key, so the 200 outcome
writes of a large switch do not fight each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from services.broker.models import NodeSet, PendingStops
from services.broker.transition import TransitionRecord
from shared.kv_store import StaleRevisionError, VersionedStore
from shared.provisioning import broker_bucket

__all__ = ["BROKER_BUCKET", "BrokerStore", "Doc", "KvDoc", "MemoryDoc", "kv_store", "memory_store"]

BROKER_BUCKET = broker_bucket()

NODES_KEY = "nodes"
PENDING_KEY = "pending_stops"
TRANSITION_KEY = "transition"
MAX_CAS_RETRIES = 10

T = TypeVar("T")


class Doc(Protocol[T]):
    async def load(self) -> T: ...

    async def mutate(self, fn: Callable[[T], T]) -> T: ...


class MemoryDoc(Generic[T]):
    """A document in memory: for unit tests and as the reference behaviour of `KvDoc`."""

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


class KvDoc(Generic[T]):
    """A document stored as JSON under `key`; an absent key reads as `default`."""

    def __init__(self, store: VersionedStore, key: str, parse: Callable[[bytes], T], default: T) -> None:
        self.store = store
        self.key = key
        self.parse = parse
        self.default = default
        self._lock = asyncio.Lock()
        self._value: T = default
        self._revision: int | None = None
        self._loaded = False

    async def _read(self) -> T:
        found = await self.store.get(self.key)
        self._loaded = True
        if found is None:
            self._value, self._revision = self.default, None
        else:
            self._value, self._revision = self.parse(found.value), found.revision
        return self._value

    async def load(self) -> T:
        async with self._lock:
            return await self._read()

    async def mutate(self, fn: Callable[[T], T]) -> T:
        async with self._lock:
            if not self._loaded:
                await self._read()
            for _ in range(MAX_CAS_RETRIES):
                new = fn(self._value)
                if new == self._value:
                    return new
                if not isinstance(new, BaseModel):
                    raise ValueError(f"{self.key}: only a model can be written, not {new!r}")
                try:
                    self._revision = await self.store.write(
                        self.key, new.model_dump_json().encode(), self._revision
                    )
                except StaleRevisionError:
                    await self._read()  # another writer: decide again on what it wrote
                    continue
                self._value = new
                return new
            raise StaleRevisionError(self.key, self._revision or 0)


@dataclass(frozen=True)
class BrokerStore:
    nodes: Doc[NodeSet]
    pending: Doc[PendingStops]
    transition: Doc[TransitionRecord | None]


def kv_store(store: VersionedStore) -> BrokerStore:
    return BrokerStore(
        nodes=KvDoc(store, NODES_KEY, NodeSet.model_validate_json, NodeSet()),
        pending=KvDoc(store, PENDING_KEY, PendingStops.model_validate_json, PendingStops()),
        transition=KvDoc[TransitionRecord | None](
            store, TRANSITION_KEY, TransitionRecord.model_validate_json, None
        ),
    )


def memory_store(
    nodes: NodeSet | None = None,
    pending: PendingStops | None = None,
    transition: TransitionRecord | None = None,
) -> BrokerStore:
    return BrokerStore(
        nodes=MemoryDoc(nodes or NodeSet()),
        pending=MemoryDoc(pending or PendingStops()),
        transition=MemoryDoc(transition),
    )
