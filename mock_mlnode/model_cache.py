"""The node's Hugging Face cache behind `/api/v1/models/*`, shared by the node's versions.

Both containers of a node mount the same cache volume, so a model downloaded through one version
is there for the other. Downloads take `download_s` (no bytes move); the real limits hold: one
download per model (409), at most three at once (429), 404 when deleting what is not there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mock_mlnode.state import Conflict, MLNodeError

__all__ = ["CachedModel", "ModelCache", "ModelRef", "ModelStatus", "NotFound", "TooManyDownloads"]

MAX_CONCURRENT_DOWNLOADS = 3


class ModelRef(BaseModel):
    """The real `Model` body: `{hf_repo, hf_commit?}`."""

    model_config = ConfigDict(extra="ignore")

    hf_repo: str = Field(min_length=1)
    hf_commit: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.hf_repo, self.hf_commit)

    @property
    def task_id(self) -> str:
        return f"{self.hf_repo}:{self.hf_commit or 'latest'}"


class ModelStatus(enum.StrEnum):
    DOWNLOADED = "DOWNLOADED"
    DOWNLOADING = "DOWNLOADING"
    NOT_FOUND = "NOT_FOUND"
    PARTIAL = "PARTIAL"


class TooManyDownloads(MLNodeError):
    status = 429


class NotFound(MLNodeError):
    status = 404


@dataclass
class CachedModel:
    ref: ModelRef
    status: ModelStatus
    started_at: float


@dataclass
class ModelCache:
    download_s: float
    cache_path: str = "/root/.cache/hub"
    size_gb_per_model: float = 15.0
    disk_gb: float = 1000.0
    models: dict[tuple[str, str | None], CachedModel] = field(default_factory=dict)

    def _refresh(self, now: float) -> None:
        for entry in self.models.values():
            if entry.status is ModelStatus.DOWNLOADING and now - entry.started_at >= self.download_s:
                entry.status = ModelStatus.DOWNLOADED

    def status(self, ref: ModelRef, now: float) -> dict[str, Any]:
        self._refresh(now)
        entry = self.models.get(ref.key)
        progress = None
        if entry is not None and entry.status is ModelStatus.DOWNLOADING:
            progress = {"start_time": entry.started_at, "elapsed_seconds": round(now - entry.started_at, 3)}
        return {
            "model": ref.model_dump(),
            "status": (entry.status if entry else ModelStatus.NOT_FOUND).value,
            "progress": progress,
            "error_message": None,
        }

    def download(self, ref: ModelRef, now: float) -> dict[str, Any]:
        self._refresh(now)
        entry = self.models.get(ref.key)
        if entry is not None and entry.status is ModelStatus.DOWNLOADING:
            raise Conflict(f"Model {ref.task_id} is already downloading")
        if entry is None or entry.status is not ModelStatus.DOWNLOADED:
            running = sum(e.status is ModelStatus.DOWNLOADING for e in self.models.values())
            if running >= MAX_CONCURRENT_DOWNLOADS:
                raise TooManyDownloads(f"Maximum concurrent downloads ({MAX_CONCURRENT_DOWNLOADS}) reached")
            entry = CachedModel(ref, ModelStatus.DOWNLOADING, now)
            self.models[ref.key] = entry
            self._refresh(now)
        return {"task_id": ref.task_id, "status": entry.status.value, "model": ref.model_dump()}

    def delete(self, ref: ModelRef, now: float) -> dict[str, Any]:
        self._refresh(now)
        if ref.hf_commit is None:
            found = [k for k in self.models if k[0] == ref.hf_repo]
        else:
            found = [ref.key] if ref.key in self.models else []
        if not found:
            raise NotFound(f"Model {ref.task_id} not found in cache")
        cancelled = any(self.models[k].status is ModelStatus.DOWNLOADING for k in found)
        for key in found:
            del self.models[key]
        return {"status": "cancelled" if cancelled else "deleted", "model": ref.model_dump()}

    def listing(self, now: float) -> dict[str, Any]:
        self._refresh(now)
        models = [
            {"model": e.ref.model_dump(), "status": e.status.value}
            for e in self.models.values()
            if e.status is not ModelStatus.DOWNLOADING
        ]
        return {"models": models}

    def space(self, now: float) -> dict[str, Any]:
        self._refresh(now)
        used = self.size_gb_per_model * sum(e.status is ModelStatus.DOWNLOADED for e in self.models.values())
        return {
            "cache_size_gb": round(used, 2),
            "available_gb": round(self.disk_gb - used, 2),
            "cache_path": self.cache_path,
        }
