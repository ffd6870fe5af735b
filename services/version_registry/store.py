"""The registry's state in one KV key, written with compare-and-swap (`shared.kv_document`).

The outbox travels with the state: a switch is first written together with the
`version.changed` events it owes, then published, then cleared. A crash between the steps
leaves the events in the outbox for the next start, never lost and never published twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from services.version_registry.core import CoreState
from shared.events import VersionChanged
from shared.kv_document import ModelCodec

__all__ = ["STATE_CODEC", "STATE_KEY", "Stored", "StoredState"]

STATE_KEY = "state"


class StoredState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    core: CoreState = CoreState()
    outbox: tuple[VersionChanged, ...] = ()


@dataclass(frozen=True)
class Stored:
    state: StoredState
    revision: int | None  # None: never written


# Format 1 adds `"format": 1`; a state written before formats existed reads as format 0.
STATE_CODEC = ModelCodec(StoredState, version=1)
