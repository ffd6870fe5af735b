"""Health probes: `/health` (alias `/livez`) with the GPU, and `/readyz`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mock_mlnode.gpu_devices import device
from mock_mlnode.routes.deps import InstanceDep, SettingsDep

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
@router.get("/livez")
async def health(inst: InstanceDep, settings: SettingsDep) -> JSONResponse:
    # 200 while a model loads, as on the real MLNode (see `NodeMachine.healthy`).
    body = inst.machine.health(device(inst.machine.gpu, settings.gpu_name, settings.gpu_memory_mb))
    return JSONResponse(body, status_code=200 if inst.machine.healthy else 503)


@router.get("/readyz")
async def readyz(inst: InstanceDep) -> JSONResponse:
    ready = inst.machine.healthy
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)
