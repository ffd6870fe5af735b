"""What vLLM answers behind the real MLNode's proxy: chat completions (streamed or not), models, tokenize.

A completion counts as in flight on its instance while it is being answered, and fails (a 503
before the answer, a dropped connection mid-stream) when the model is unloaded under it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from mock_mlnode.completions import ChatRequest, Generation, chat_completion, sse_chunks, tokenize
from mock_mlnode.dispatch import ConnectionDropped
from mock_mlnode.instances import Instance
from mock_mlnode.routes.deps import InstanceDep, SettingsDep
from mock_mlnode.settings import MockMLNodeSettings
from mock_mlnode.state import NotReady

__all__ = ["TokenizeRequest", "router"]

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    model: str | None = None


@router.post("/v1/chat/completions")
async def chat_completions(inst: InstanceDep, settings: SettingsDep, body: ChatRequest) -> Response:
    model = inst.machine.require_model()
    if body.model is not None and body.model != model:
        return JSONResponse({"detail": f"The model `{body.model}` does not exist."}, status_code=404)
    generation = inst.machine.generation
    m = inst.machine
    answer = Generation.plan(body, model, m.version, m.node, settings.stream_chunks)
    if not body.stream:
        inst.in_flight += 1
        try:
            if settings.completion_delay_s:
                await asyncio.sleep(settings.completion_delay_s)
            if m.generation != generation:
                raise NotReady("the model was unloaded while answering")
        finally:
            inst.in_flight -= 1
        return JSONResponse(chat_completion(answer))
    return StreamingResponse(
        _events(inst, settings, answer, generation),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _events(
    inst: Instance, settings: MockMLNodeSettings, answer: Generation, generation: int
) -> AsyncIterator[bytes]:
    """The SSE chunks of `answer`, paced, cut off if the model generation changes mid-stream."""
    m = inst.machine
    inst.in_flight += 1
    try:
        for i, chunk in enumerate(sse_chunks(answer)):
            if i and settings.stream_chunk_delay_s:
                await asyncio.sleep(settings.stream_chunk_delay_s)
            if m.generation != generation:
                raise ConnectionDropped(f"{m.name} was stopped mid-stream")
            yield chunk
    finally:
        inst.in_flight -= 1


@router.get("/v1/models")
async def models(inst: InstanceDep, settings: SettingsDep) -> dict[str, Any]:
    model = inst.machine.require_model()
    entry = {
        "id": model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": settings.max_model_len,
    }
    return {"object": "list", "data": [entry]}


@router.post("/tokenize")
async def tokenize_route(inst: InstanceDep, settings: SettingsDep, body: TokenizeRequest) -> dict[str, Any]:
    inst.machine.require_model()
    return tokenize(body.prompt, settings.max_model_len)
