"""The GPU routes (added to the real MLNode after 3.0.6): devices and driver."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mock_mlnode.gpu_devices import DRIVER_INFO, devices_answer
from mock_mlnode.routes.deps import InstanceDep, SettingsDep

__all__ = ["router"]

router = APIRouter()


@router.get("/api/v1/gpu/devices")
async def gpu_devices(inst: InstanceDep, settings: SettingsDep) -> dict[str, Any]:
    return devices_answer(inst.machine.gpu, settings.gpu_name, settings.gpu_memory_mb)


@router.get("/api/v1/gpu/driver")
async def gpu_driver() -> dict[str, str]:
    return DRIVER_INFO
