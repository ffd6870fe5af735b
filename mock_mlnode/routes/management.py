"""Management: the node's state and the stop the broker sends to an old version."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from mock_mlnode.routes.deps import OK, InstanceDep, SettingsDep
from shared.logging import get_logger

__all__ = ["router"]

log = get_logger(__name__)

router = APIRouter()


@router.get("/api/v1/state")
async def get_state(inst: InstanceDep) -> dict[str, str]:
    return {"state": inst.machine.state.value}


@router.post("/api/v1/stop")
async def stop(inst: InstanceDep, settings: SettingsDep) -> dict[str, str]:
    if settings.stop_s:
        await asyncio.sleep(settings.stop_s)
    inst.stop()
    log.info("stopped", extra={"version": inst.machine.version, "node": inst.machine.node})
    return OK
