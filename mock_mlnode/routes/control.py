"""The `/mock/*` control API: instances, the request log, fault rules, and a process exit on request.

`PrefixDispatch` passes these paths through unprefixed, unfaulted and unrecorded.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from mock_mlnode.faults import FaultRule
from mock_mlnode.routes.deps import OK, MockDep
from shared.logging import get_logger

__all__ = ["ExitRequest", "router"]

log = get_logger(__name__)

router = APIRouter(prefix="/mock")


class ExitRequest(BaseModel):
    code: Annotated[int, Field(ge=0, le=255)] = 1


@router.get("/instances")
async def instances(mock: MockDep) -> dict[str, Any]:
    return {"instances": [i.describe() for i in mock.instances.values()]}


@router.get("/requests")
async def requests(
    mock: MockDep,
    version: str = "",
    node: str = "",
    route: str = "",
    method: str = "",
    since: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    found = mock.log.query(version=version, node=node, route=route, method=method, since=since)
    return {"requests": [r.to_json() for r in found]}


@router.delete("/requests")
async def clear_requests(mock: MockDep) -> dict[str, str]:
    mock.log.clear()
    return OK


@router.get("/faults")
async def list_faults(mock: MockDep) -> dict[str, Any]:
    return {"faults": mock.faults.describe()}


@router.post("/faults")
async def add_fault(mock: MockDep, rule: FaultRule) -> dict[str, Any]:
    return {"id": mock.faults.add(rule)}


@router.delete("/faults")
async def clear_faults(mock: MockDep) -> dict[str, str]:
    mock.faults.clear()
    return OK


@router.post("/exit")
async def exit_process(body: ExitRequest | None = None) -> dict[str, Any]:
    code = body.code if body else 1
    log.warning("exiting on request", extra={"code": code})
    asyncio.get_running_loop().call_later(0.05, os._exit, code)  # after the answer is flushed
    return {"status": "exiting", "code": code}
