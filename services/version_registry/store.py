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
from shared.registry_api import Transition

__all__ = [
    "STATE_CODEC",
    "STATE_KEY",
    "TRANSITION_LOG_CODEC",
    "TRANSITION_LOG_KEPT",
    "TRANSITION_LOG_KEY",
    "Stored",
    "StoredState",
    "TransitionLog",
]

STATE_KEY = "state"
TRANSITION_LOG_KEY = "transitions"
TRANSITION_LOG_KEPT = 1000  # about 300 KB: well inside a KV value, written only at a switch


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


class TransitionLog(BaseModel):
    """Every switch, oldest first, under its own key: written when a switch is published, never per block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transitions: tuple[Transition, ...] = ()

    def with_transitions(self, new: tuple[Transition, ...]) -> TransitionLog:
        """`new` appended, those already logged skipped (a republished outbox logs nothing twice)."""
        known = {t.transition_id for t in self.transitions}
        added: list[Transition] = []
        for transition in new:
            if transition.transition_id not in known:
                known.add(transition.transition_id)
                added.append(transition)
        if not added:
            return self
        return TransitionLog(transitions=(*self.transitions, *added)[-TRANSITION_LOG_KEPT:])

    def merged(self, hot: tuple[Transition, ...]) -> tuple[Transition, ...]:
        """The log with the state's newest switches it does not hold yet (a state from before the log)."""
        return self.with_transitions(hot).transitions


TRANSITION_LOG_CODEC = ModelCodec(TransitionLog, version=1)
