"""How long each (node, version) took to load its model, measured by the handoffs and persisted.

The staged switch hands its early nodes over that long before the height (`staging.plan`); the
slowest of the last few loads is the expectation, so one fast load does not make it late.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.kv_document import Document
from shared.versions import MLNodeVersion

__all__ = ["LoadTimeBook", "LoadTimes"]

KEEP = 5
MAX_SECONDS = 86_400
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


def _key(node_id: str, version: MLNodeVersion) -> str:
    return f"{node_id}@{version}"


class LoadTimes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loads: dict[str, tuple[Seconds, ...]] = Field(default_factory=dict)  # "node@version" -> newest last

    def with_load(self, node_id: str, version: MLNodeVersion, seconds: float) -> LoadTimes:
        # Not validated again: the loads held are valid, and a new one is a measured duration.
        # (Validating the whole book on every handoff made a 1,000-node switch quadratic.)
        if not 0 <= seconds <= MAX_SECONDS:
            raise ValueError(f"a load of {seconds}s is out of range")
        key = _key(node_id, version)
        loads = {**self.loads, key: (*self.loads.get(key, ())[-(KEEP - 1) :], seconds)}
        return LoadTimes.model_construct(loads=loads)

    def without_node(self, node_id: str) -> LoadTimes:
        loads = {k: v for k, v in self.loads.items() if k.rsplit("@", 1)[0] != node_id}
        return LoadTimes.model_construct(loads=loads)

    def expected(self, node_id: str, version: MLNodeVersion) -> float | None:
        """The slowest of the recent loads, or None before the first."""
        found = self.loads.get(_key(node_id, version))
        return max(found) if found else None


class LoadTimeBook:
    def __init__(self, doc: Document[LoadTimes]) -> None:
        self._doc = doc
        self.times = LoadTimes()

    async def load(self) -> None:
        self.times = await self._doc.load()

    async def record(self, node_id: str, version: MLNodeVersion, seconds: float) -> None:
        self.times = self.times.with_load(node_id, version, seconds)
        self.times = await self._doc.mutate(lambda t: t.with_load(node_id, version, seconds))

    async def forget(self, node_id: str) -> None:
        self.times = await self._doc.mutate(lambda t: t.without_node(node_id))
