"""In-memory stand-ins for the registry's ports: its KV document and the VERSION stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.version_registry.metrics import RegistryMetrics
from services.version_registry.registry import RegistryService
from services.version_registry.store import Stored, StoredState, TransitionLog
from shared.events import VersionChanged
from shared.kv_document import MemoryDocument
from shared.kv_store import StaleRevisionError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class FakeStateDocument:
    """The state's KV key, with `KvDocument`'s rules: on a conflict it counts, re-reads, decides again.

    Each state in `other_writes` is written by another instance just before one of our writes;
    `crash_on_clears` writes that would clear the outbox raise instead (the process died there).
    """

    value: StoredState = field(default_factory=StoredState)
    revision: int | None = None
    other_writes: list[StoredState] = field(default_factory=list)
    on_conflict: Callable[[], object] | None = None
    writes: list[StoredState] = field(default_factory=list)
    max_attempts: int = 100
    crash_on_clears: int = 0

    async def load(self) -> StoredState:
        return self.value

    async def mutate(self, fn: Callable[[StoredState], StoredState]) -> StoredState:
        for _ in range(self.max_attempts):
            new = fn(self.value)
            if new == self.value:
                return new
            if self.crash_on_clears and self.value.outbox and not new.outbox:
                self.crash_on_clears -= 1
                raise ConnectionError("crashed before the outbox was cleared")
            if self.other_writes:
                self.value = self.other_writes.pop(0)
                self.revision = (self.revision or 0) + 1
                if self.on_conflict is not None:
                    self.on_conflict()
                continue
            self.value = new
            self.revision = (self.revision or 0) + 1
            self.writes.append(new)
            return new
        raise StaleRevisionError("state", self.revision or 0)


@dataclass
class FakeChangeLog:
    """The VERSION stream: what was published, in order."""

    published: list[VersionChanged] = field(default_factory=list)

    async def publish(self, change: VersionChanged) -> None:
        self.published.append(change)

    async def last_published(self) -> bytes | None:
        return self.published[-1].model_dump_json().encode() if self.published else None


@dataclass
class RegistryRig:
    service: RegistryService
    document: FakeStateDocument
    changes: FakeChangeLog
    metrics: RegistryMetrics


async def registry_rig(
    state: StoredState | None = None,
    changes: FakeChangeLog | None = None,
    transitions: MemoryDocument[TransitionLog] | None = None,
) -> RegistryRig:
    """A `RegistryService` over fakes, resumed, as the composition root hands it over."""
    metrics = RegistryMetrics("registry")
    document = FakeStateDocument(state or StoredState(), None if state is None else 1)
    document.on_conflict = metrics.cas_conflicts_total.inc
    log = changes or FakeChangeLog()
    service = RegistryService(
        document,
        log,
        metrics,
        Stored(document.value, document.revision),
        clock=lambda: NOW,
        transitions=transitions,
    )
    await service.resume()
    return RegistryRig(service, document, log, metrics)
