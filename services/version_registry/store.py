"""The registry's state in one KV key, written with compare-and-swap.

The outbox travels with the state: a switch is first written together with the
`version.changed` events it owes, then published, then cleared. A crash between the steps
leaves the events in the outbox for the next start, never lost and never published twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from services.version_registry.core import CoreState
from shared.events import VersionChanged
from shared.kv_store import VersionedStore

__all__ = ["STATE_KEY", "RegistryStore", "Stored", "StoredState"]

STATE_KEY = "state"


class StoredState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    core: CoreState = CoreState()
    outbox: tuple[VersionChanged, ...] = ()


@dataclass(frozen=True)
class Stored:
    state: StoredState
    revision: int | None  # None: never written


class RegistryStore:
    def __init__(self, store: VersionedStore) -> None:
        self.store = store

    async def load(self) -> Stored:
        found = await self.store.get(STATE_KEY)
        if found is None:
            return Stored(StoredState(), None)
        return Stored(StoredState.model_validate_json(found.value), found.revision)

    async def save(self, state: StoredState, revision: int | None) -> int:
        """Raises StaleRevisionError when another writer got there first."""
        return await self.store.write(STATE_KEY, state.model_dump_json().encode(), revision)
