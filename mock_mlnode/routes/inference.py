"""Inference up and down: the model load the GPU lock guards, synchronous or polled."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mock_mlnode.routes.deps import OK, InstanceDep, MockDep, SettingsDep, conflicts_with
from mock_mlnode.state import MLNodeError

__all__ = ["InferenceInitRequest", "router"]

router = APIRouter(dependencies=conflicts_with("inference"))


class InferenceInitRequest(BaseModel):
    """The real `InferenceInitRequest`: `dtype` has no default there either (422 without it)."""

    model: str = Field(min_length=1)
    dtype: str
    additional_args: list[str] = Field(default_factory=list)


@router.post("/api/v1/inference/up")
async def inference_up(
    inst: InstanceDep, mock: MockDep, settings: SettingsDep, body: InferenceInitRequest
) -> dict[str, str]:
    task = inst.begin_inference(body.model, mock.clock(), settings.model_load_s)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
    if inst.machine.loaded_model is None:
        raise MLNodeError("inference startup did not complete (stopped while loading)")
    return OK


@router.post("/api/v1/inference/up/async")
async def inference_up_async(
    inst: InstanceDep, mock: MockDep, settings: SettingsDep, body: InferenceInitRequest
) -> dict[str, str]:
    inst.begin_inference(body.model, mock.clock(), settings.model_load_s)
    return {"status": "starting", "message": f"Inference startup initiated for {body.model}"}


@router.get("/api/v1/inference/up/status")
async def inference_up_status(inst: InstanceDep, mock: MockDep) -> dict[str, Any]:
    return inst.machine.startup_status(mock.clock())


@router.post("/api/v1/inference/down")
async def inference_down(inst: InstanceDep) -> dict[str, str]:
    if inst.machine.state.value == "INFERENCE":
        inst.stop()
    return OK
