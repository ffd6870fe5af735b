"""The model-cache routes (added to the real MLNode after 3.0.6), on the cache the node's versions share."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from mock_mlnode.model_cache import ModelCache, ModelRef
from mock_mlnode.routes.deps import InstanceDep, MockDep

__all__ = ["router"]

router = APIRouter()


async def _cache(inst: InstanceDep, mock: MockDep) -> ModelCache:
    return mock.model_caches[inst.machine.node]


CacheDep = Annotated[ModelCache, Depends(_cache)]


@router.post("/api/v1/models/status")
async def model_status(cache: CacheDep, mock: MockDep, body: ModelRef) -> dict[str, Any]:
    return cache.status(body, mock.clock())


@router.post("/api/v1/models/download", status_code=202)
async def model_download(cache: CacheDep, mock: MockDep, body: ModelRef) -> dict[str, Any]:
    return cache.download(body, mock.clock())


@router.delete("/api/v1/models")
async def model_delete(cache: CacheDep, mock: MockDep, body: ModelRef) -> dict[str, Any]:
    return cache.delete(body, mock.clock())


@router.get("/api/v1/models/list")
async def model_list(cache: CacheDep, mock: MockDep) -> dict[str, Any]:
    return cache.listing(mock.clock())


@router.get("/api/v1/models/space")
async def model_space(cache: CacheDep, mock: MockDep) -> dict[str, Any]:
    return cache.space(mock.clock())
