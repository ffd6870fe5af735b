"""The mock chain's test controls: blocks on demand, governance by hand, and faults.

`POST /advance?n=` produces blocks now; `POST /gov/proposals` takes the submit-proposal JSON
(`?vote=no` makes it fail its vote), `GET /gov/proposals[/{id}]` and `GET /gov/params` show
them; under `/mock/` the faults: paused blocks, skipped events, lagging queries, gRPC errors,
dropped or hand-written websocket frames. None of these exist on a real node.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mock_chain.gov import GOV_MODULE_ADDRESS, ProposalRejected
from mock_chain.node import BlocksPaused, GrpcFault
from mock_chain.routes.deps import NodeDep
from shared.logging import get_logger

__all__ = ["router"]

log = get_logger(__name__)

MAX_ADVANCE = 100_000

router = APIRouter()


class _FaultGrpc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Literal[
        "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN", "NOT_FOUND", "RESOURCE_EXHAUSTED"
    ] = "UNAVAILABLE"
    message: str = "injected fault"
    method: Literal["PartialUpgrade", "PartialUpgradeAll", "MLNodeVersion"] | None = None
    times: Annotated[int, Field(ge=1)] | None = None


class _QueryLag(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blocks: Annotated[int, Field(ge=0, le=1_000_000)]


class _SkipEvents(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: Annotated[int, Field(ge=0, le=1_000_000)]


@router.post("/advance")
async def advance(node: NodeDep, n: Annotated[int, Query(ge=1, le=MAX_ADVANCE)] = 1) -> JSONResponse:
    try:
        blocks = node.advance(n)
    except BlocksPaused as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse(
        {
            "height": node.chain.height,
            "blocks": [{"height": b.height, "hash": b.hash} for b in blocks[-100:]],
        }
    )


@router.post("/gov/proposals")
async def submit_proposal(
    node: NodeDep, request: Request, vote: Annotated[Literal["yes", "no"], Query()] = "yes"
) -> JSONResponse:
    try:
        raw = json.loads(await request.body())
    except ValueError as exc:
        return JSONResponse({"error": f"the proposal is not valid JSON: {exc}"}, status_code=400)
    try:
        proposal = node.submit_proposal(raw, passes=vote == "yes")
    except ProposalRejected as exc:
        log.warning("proposal refused", extra={"event": "proposal_refused", "reason": str(exc)})
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"proposal_id": str(proposal.id), **proposal.describe()})


@router.get("/gov/proposals")
async def list_proposals(node: NodeDep) -> dict[str, Any]:
    return {"proposals": [p.describe() for p in node.chain.proposals.values()]}


@router.get("/gov/proposals/{proposal_id}")
async def get_proposal(node: NodeDep, proposal_id: int) -> JSONResponse:
    proposal = node.chain.proposals.get(proposal_id)
    if proposal is None:
        return JSONResponse({"error": f"proposal {proposal_id} doesn't exist"}, status_code=404)
    return JSONResponse(proposal.describe())


@router.get("/gov/params")
async def gov_params(node: NodeDep) -> dict[str, Any]:
    return {
        "voting_period_blocks": node.chain.voting_period_blocks,
        "authority": GOV_MODULE_ADDRESS,
        "current_height": node.chain.height,
        "mlnode_version": node.chain.mlnode_version,
    }


@router.get("/mock/faults")
async def get_faults(node: NodeDep) -> dict[str, Any]:
    return node.faults.describe()


@router.delete("/mock/faults")
async def clear_faults(node: NodeDep) -> dict[str, Any]:
    node.faults.paused = False
    node.faults.skip_events = 0
    node.faults.grpc = None
    node.faults.query_lag = 0
    return node.faults.describe()


@router.post("/mock/faults/pause")
async def pause(node: NodeDep) -> dict[str, Any]:
    node.faults.paused = True
    return node.faults.describe()


@router.post("/mock/faults/resume")
async def resume(node: NodeDep) -> dict[str, Any]:
    node.faults.paused = False
    return node.faults.describe()


@router.post("/mock/faults/close-websockets")
async def close_websockets(node: NodeDep) -> dict[str, int]:
    return {"closed": node.close_websockets()}


@router.post("/mock/faults/skip-events")
async def skip_events(node: NodeDep, body: _SkipEvents) -> dict[str, Any]:
    node.faults.skip_events = body.count
    return node.faults.describe()


@router.post("/mock/faults/lag")
async def query_lag(node: NodeDep, body: _QueryLag) -> dict[str, Any]:
    """Answer /status, /block and gRPC as a node `blocks` behind; NewBlock frames stay current."""
    node.faults.query_lag = body.blocks
    return node.faults.describe()


@router.post("/mock/faults/grpc")
async def grpc_fault(node: NodeDep, body: _FaultGrpc) -> dict[str, Any]:
    node.faults.grpc = GrpcFault(
        code=grpc.StatusCode[body.code], message=body.message, method=body.method, times=body.times
    )
    return node.faults.describe()


@router.delete("/mock/faults/grpc")
async def clear_grpc_fault(node: NodeDep) -> dict[str, Any]:
    node.faults.grpc = None
    return node.faults.describe()


@router.post("/mock/websocket/send")
async def websocket_send(
    node: NodeDep, text: Annotated[str, Body(media_type="text/plain")]
) -> dict[str, int]:
    return {"sent": node.send_raw(text)}


@router.get("/mock/websockets")
async def websockets_info(node: NodeDep) -> dict[str, int]:
    return node.websocket_stats()
