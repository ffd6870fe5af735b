"""Training: start, stop and status, with the real routes' answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from mock_mlnode.routes.deps import InstanceDep, conflicts_with

__all__ = ["router"]

router = APIRouter(dependencies=conflicts_with("train"))


@router.post("/api/v1/train/start")
async def train_start(inst: InstanceDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, str]:
    inst.machine.train_start()
    return {"status": "Training started"}


@router.post("/api/v1/train/stop")
async def train_stop(inst: InstanceDep) -> dict[str, str]:
    inst.machine.train_stop()
    return {"status": "Training stopped"}


@router.get("/api/v1/train/status")
async def train_status(inst: InstanceDep) -> dict[str, bool]:
    return {"status": inst.machine.train_running}
