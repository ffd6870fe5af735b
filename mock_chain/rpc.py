"""The mock node's HTTP face: CometBFT JSON-RPC (URI, POST and websocket) plus test controls.

CometBFT routes: `GET /status`, `GET /block?height=H`, `GET /health`, `POST /` with a JSON-RPC
body, and `/websocket` with `subscribe`/`unsubscribe`/`unsubscribe_all` (and the same methods as
over HTTP). Test controls: `POST /advance?n=`, `POST /gov/proposals` (the submit-proposal JSON),
`GET /gov/proposals[/{id}]`, `GET /gov/params`, and faults under `/mock/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any, Literal

import grpc
from fastapi import Body, FastAPI, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from mock_chain.cometbft import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    block_result,
    rpc_error,
    rpc_result,
    status_result,
)
from mock_chain.gov import GOV_MODULE_ADDRESS, ProposalRejected
from mock_chain.node import CLOSE, BlocksPaused, ChainNode, GrpcFault, Subscriber
from shared.logging import get_logger

__all__ = ["create_rpc_app"]

log = get_logger(__name__)

MAX_ADVANCE = 100_000


class _Params(ValueError):
    """Invalid JSON-RPC params; the message is the `data` of the error."""


def _height_param(raw: Any) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        raw = raw.strip('"')
        if not (raw.isascii() and raw.lstrip("-").isdigit()):
            raise _Params(f"height must be an integer, got {raw!r}")
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise _Params(f"height must be an integer, got {raw!r}")


def _param(params: Any, name: str, position: int) -> Any:
    if isinstance(params, dict):
        return params.get(name)
    if isinstance(params, list):
        return params[position] if len(params) > position else None
    if params is None:
        return None
    raise _Params("params must be an object or an array")


def _call(node: ChainNode, request_id: Any, method: Any, params: Any) -> dict[str, Any]:
    """One JSON-RPC call other than the subscription methods."""
    chain = node.chain
    try:
        if method == "health":
            return rpc_result(request_id, {})
        if method == "status":
            served = node.served_height
            earliest = chain.blocks.get(chain.earliest_height) if served else None
            return rpc_result(
                request_id, status_result(chain.blocks.get(served), earliest, chain_id=chain.chain_id)
            )
        if method == "block":
            # CometBFT v0.38 rpc/core `getHeight`, word for word.
            served = node.served_height
            height = _height_param(_param(params, "height", 0))
            if height is None:
                height = served
            if height <= 0:
                return rpc_error(
                    request_id,
                    INTERNAL_ERROR,
                    "Internal error",
                    f"height must be greater than 0, but got {height}",
                )
            if height > served:
                return rpc_error(
                    request_id,
                    INTERNAL_ERROR,
                    "Internal error",
                    f"height {height} must be less than or equal to the current blockchain height {served}",
                )
            if height < chain.earliest_height:
                return rpc_error(
                    request_id,
                    INTERNAL_ERROR,
                    "Internal error",
                    f"height {height} is not available, lowest height is {chain.earliest_height}",
                )
            return rpc_result(request_id, block_result(chain.blocks[height]))
    except _Params as exc:
        return rpc_error(request_id, INVALID_PARAMS, "Invalid params", str(exc))
    return rpc_error(request_id, METHOD_NOT_FOUND, "Method not found", f"unknown method {method!r}")


def _rpc_response(doc: dict[str, Any]) -> JSONResponse:
    return JSONResponse(doc, status_code=500 if "error" in doc else 200)


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


def create_rpc_app(node: ChainNode) -> FastAPI:
    app = FastAPI(title="mock chain (CometBFT RPC)", docs_url=None, redoc_url=None)

    # -- CometBFT JSON-RPC ------------------------------------------------------------------

    @app.get("/status")
    async def status() -> JSONResponse:
        return _rpc_response(_call(node, -1, "status", None))

    @app.get("/block")
    async def block(height: str | None = None) -> JSONResponse:
        return _rpc_response(_call(node, -1, "block", {"height": height}))

    @app.get("/health")
    async def health() -> JSONResponse:
        return _rpc_response(_call(node, -1, "health", None))

    @app.post("/")
    async def jsonrpc(request: Request) -> JSONResponse:
        try:
            doc = json.loads(await request.body())
        except ValueError as exc:
            return _rpc_response(rpc_error(-1, PARSE_ERROR, "Parse error. Invalid JSON", str(exc)))
        if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0" or "method" not in doc:
            return _rpc_response(
                rpc_error(
                    doc.get("id", -1) if isinstance(doc, dict) else -1,
                    INVALID_REQUEST,
                    "Invalid Request",
                    "expected a JSON-RPC 2.0 request",
                )
            )
        if doc["method"] in ("subscribe", "unsubscribe", "unsubscribe_all"):
            return _rpc_response(
                rpc_error(
                    doc.get("id"),
                    METHOD_NOT_FOUND,
                    "Method not found",
                    "subscriptions are only available over /websocket",
                )
            )
        return _rpc_response(_call(node, doc.get("id"), doc["method"], doc.get("params")))

    @app.websocket("/websocket")
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        sub = node.add_subscriber()
        sender = asyncio.create_task(_send_loop(ws, sub))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                reply = _ws_call(node, sub, text)
                if reply is not None:
                    sub.send(json.dumps(reply))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            node.remove_subscriber(sub)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    # -- test controls ----------------------------------------------------------------------

    @app.post("/advance")
    async def advance(n: Annotated[int, Query(ge=1, le=MAX_ADVANCE)] = 1) -> JSONResponse:
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

    @app.post("/gov/proposals")
    async def submit_proposal(
        request: Request, vote: Annotated[Literal["yes", "no"], Query()] = "yes"
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

    @app.get("/gov/proposals")
    async def list_proposals() -> dict[str, Any]:
        return {"proposals": [p.describe() for p in node.chain.proposals.values()]}

    @app.get("/gov/proposals/{proposal_id}")
    async def get_proposal(proposal_id: int) -> JSONResponse:
        proposal = node.chain.proposals.get(proposal_id)
        if proposal is None:
            return JSONResponse({"error": f"proposal {proposal_id} doesn't exist"}, status_code=404)
        return JSONResponse(proposal.describe())

    @app.get("/gov/params")
    async def gov_params() -> dict[str, Any]:
        return {
            "voting_period_blocks": node.chain.voting_period_blocks,
            "authority": GOV_MODULE_ADDRESS,
            "current_height": node.chain.height,
            "mlnode_version": node.chain.mlnode_version,
        }

    @app.get("/mock/faults")
    async def get_faults() -> dict[str, Any]:
        return node.faults.describe()

    @app.delete("/mock/faults")
    async def clear_faults() -> dict[str, Any]:
        node.faults.paused = False
        node.faults.skip_events = 0
        node.faults.grpc = None
        node.faults.query_lag = 0
        return node.faults.describe()

    @app.post("/mock/faults/pause")
    async def pause() -> dict[str, Any]:
        node.faults.paused = True
        return node.faults.describe()

    @app.post("/mock/faults/resume")
    async def resume() -> dict[str, Any]:
        node.faults.paused = False
        return node.faults.describe()

    @app.post("/mock/faults/close-websockets")
    async def close_websockets() -> dict[str, int]:
        return {"closed": node.close_websockets()}

    @app.post("/mock/faults/skip-events")
    async def skip_events(body: _SkipEvents) -> dict[str, Any]:
        node.faults.skip_events = body.count
        return node.faults.describe()

    @app.post("/mock/faults/lag")
    async def query_lag(body: _QueryLag) -> dict[str, Any]:
        """Answer /status, /block and gRPC as a node `blocks` behind; NewBlock frames stay current."""
        node.faults.query_lag = body.blocks
        return node.faults.describe()

    @app.post("/mock/faults/grpc")
    async def grpc_fault(body: _FaultGrpc) -> dict[str, Any]:
        node.faults.grpc = GrpcFault(
            code=grpc.StatusCode[body.code], message=body.message, method=body.method, times=body.times
        )
        return node.faults.describe()

    @app.delete("/mock/faults/grpc")
    async def clear_grpc_fault() -> dict[str, Any]:
        node.faults.grpc = None
        return node.faults.describe()

    @app.post("/mock/websocket/send")
    async def websocket_send(text: Annotated[str, Body(media_type="text/plain")]) -> dict[str, int]:
        return {"sent": node.send_raw(text)}

    @app.get("/mock/websockets")
    async def websockets_info() -> dict[str, int]:
        return node.websocket_stats()

    return app


def _ws_call(node: ChainNode, sub: Subscriber, text: str) -> dict[str, Any] | None:
    """Handle one websocket frame; returns the reply, if any."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return rpc_error(-1, PARSE_ERROR, "Parse error. Invalid JSON", f"error unmarshaling request: {exc}")
    if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0" or not isinstance(doc.get("method"), str):
        request_id = doc.get("id", -1) if isinstance(doc, dict) else -1
        return rpc_error(request_id, INVALID_REQUEST, "Invalid Request", "expected a JSON-RPC 2.0 request")
    request_id, method, params = doc.get("id"), doc["method"], doc.get("params")
    if "id" not in doc:
        return None  # a notification: no reply
    try:
        if method == "subscribe":
            query = _param(params, "query", 0)
            if not isinstance(query, str) or not query.strip():
                raise _Params("query must be a non-empty string, e.g. \"tm.event='NewBlock'\"")
            if query in sub.subscriptions:
                return rpc_error(request_id, INTERNAL_ERROR, "Internal error", "already subscribed")
            sub.subscriptions[query] = request_id
            return rpc_result(request_id, {})
        if method == "unsubscribe":
            query = _param(params, "query", 0)
            if sub.subscriptions.pop(query, None) is None:
                return rpc_error(request_id, INTERNAL_ERROR, "Internal error", "subscription not found")
            return rpc_result(request_id, {})
        if method == "unsubscribe_all":
            sub.subscriptions.clear()
            return rpc_result(request_id, {})
    except _Params as exc:
        return rpc_error(request_id, INVALID_PARAMS, "Invalid params", str(exc))
    return _call(node, request_id, method, params)


async def _send_loop(ws: WebSocket, sub: Subscriber) -> None:
    """The one writer of a websocket: replies and events in order; CLOSE ends the connection."""
    while True:
        item = await sub.queue.get()
        if item is CLOSE:
            if ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await ws.close(code=1001, reason="going away")
            return
        assert isinstance(item, str)
        try:
            await ws.send_text(item)
        except (RuntimeError, WebSocketDisconnect):
            return
