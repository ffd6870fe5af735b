"""What the registry needs from the world, as Protocols: the adapters in `service.py` (the KV
document, the VERSION stream) satisfy them, and `tests/unit/registry_fakes.py` stands in for them
without sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from services.version_registry.store import StoredState, TransitionLog
from shared.events import VersionChanged

__all__ = ["ChangeLog", "StateDocument", "TransitionLogDocument"]


class StateDocument(Protocol):
    """The registry's one KV document (`shared.kv_document.KvDocument` of `StoredState`).

    `mutate` decides again on the other writer's value after a conflict; a fn that raises gives up.
    """

    @property
    def revision(self) -> int | None: ...

    async def load(self) -> StoredState: ...

    async def mutate(self, fn: Callable[[StoredState], StoredState]) -> StoredState: ...


class TransitionLogDocument(Protocol):
    """The full record of switches, beside the state (`shared.kv_document.KvDocument`)."""

    async def load(self) -> TransitionLog: ...

    async def mutate(self, fn: Callable[[TransitionLog], TransitionLog]) -> TransitionLog: ...


class ChangeLog(Protocol):
    """The VERSION stream, where the outbox's `version.changed` events go."""

    async def publish(self, change: VersionChanged) -> None: ...

    async def last_published(self) -> bytes | None:
        """The newest `version.changed` message on the stream (None: there is none)."""
        ...
