"""The CometBFT RPC routes of the mock node: URI, JSON-RPC `POST /` and the websocket.

They answer as cometbft v0.38.17 rpc/jsonrpc/server serves them (checked against
http_json_handler.go, http_uri_handler.go, http_server.go and ws_handler.go):

- `POST /` (JSON-RPC): every answer is **HTTP 200**, errors included, with the error object in the
  body. A batch (array) gets one response per request that has an id, in order; a request
  without an id (a notification) gets none, so a lone notification, a batch of notifications or
  `[]` get an empty 200 body, and a batch left with one response gets that object, not an array.
  Only a body that is no request at all is HTTP 500 (-32700, no id). An empty body gets the HTML
  list of endpoints. ws-only methods (`subscribe`, ...) and unknown ones are -32601 without data;
  params that do not convert are -32602; a failing call is -32603.
- URI routes (`GET /status`, `/block?height=`, `/health`, `/abci_query?path="..."&data=0x..`):
  the JSON-RPC envelope with id -1; a failing call (-32603) or bad params (-32602) is **HTTP 500**
  (`WriteRPCResponseHTTPError`); a ws-only method is HTTP 404 (-32601).
- `/websocket`: `subscribe`/`unsubscribe`/`unsubscribe_all` and the same methods as over HTTP;
  every failure there, bad params included, is -32603.
- Any other path: 404 `404 page not found` (Go's `http.NotFound`). `/block?height=H` with a
  height is sent with `Cache-Control: public, max-age=86400`; every answer has `X-Server-Time`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect, WebSocketState

from mock_chain import abci
from mock_chain.cometbft import (
    FUNCS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ArgError,
    ParseError,
    RpcRequest,
    args_from_json,
    args_from_uri,
    block_result,
    decode_request,
    decode_requests,
    rpc_error,
    rpc_result,
    status_result,
)
from mock_chain.node import CLOSE, ChainNode, Subscriber
from mock_chain.routes.deps import NodeDep

__all__ = ["not_found", "router"]

URI_REQUEST_ID = -1  # CometBFT answers URI requests with this id
CACHEABLE = {"Cache-Control": "public, max-age=86400"}

router = APIRouter()


class _Failed(RuntimeError):
    """The function itself failed (rpc/core returned an error): -32603 with this message."""


def _invoke(node: ChainNode, method: str, args: Mapping[str, Any]) -> Any:
    """The `result` of one of the HTTP functions of `FUNCS`; `_Failed` as rpc/core fails."""
    chain = node.chain
    if method == "health":
        return {}
    if method == "status":
        served = node.served_height
        earliest = chain.blocks.get(chain.earliest_height) if served else None
        return status_result(chain.blocks.get(served), earliest, chain_id=chain.chain_id)
    if method == "block":
        # CometBFT v0.38 rpc/core `getHeight`, word for word.
        served = node.served_height
        height = args.get("height")
        if height is None:
            height = served
        if height <= 0:
            raise _Failed(f"height must be greater than 0, but got {height}")
        if height > served:
            raise _Failed(
                f"height {height} must be less than or equal to the current blockchain height {served}"
            )
        if height < chain.earliest_height:
            raise _Failed(f"height {height} is not available, lowest height is {chain.earliest_height}")
        return block_result(chain.blocks[height])
    if method == "abci_query":
        # rpc/core ABCIQuery passes everything to the app, whose answer (errors included, as a
        # non-zero code) is the result; height 0 means the latest, as BaseApp.Query reads it.
        height = int(args["height"])
        response = abci.abci_query(node, str(args["path"]), bytes(args["data"]), height or None)
        return {"response": response}
    raise AssertionError(f"no HTTP function {method!r}")


def _answer(node: ChainNode, request: RpcRequest, *, websocket: bool) -> tuple[dict[str, Any], bool]:
    """The response to one request with an id, and whether it may be cached."""
    func = FUNCS.get(request.method)
    if func is None or (func.ws_only and not websocket):
        return rpc_error(request.id, METHOD_NOT_FOUND, "Method not found"), False
    args: dict[str, Any] = {}
    if request.has_params:
        try:
            args = args_from_json(func, request.params)
        except ArgError as exc:
            code, message = (
                (INTERNAL_ERROR, "Internal error") if websocket else (INVALID_PARAMS, "Invalid params")
            )
            return rpc_error(
                request.id, code, message, f"error converting json params to arguments: {exc}"
            ), False
    try:
        result = _invoke(node, request.method, args)
    except _Failed as exc:
        return rpc_error(request.id, INTERNAL_ERROR, "Internal error", str(exc)), False
    return rpc_result(request.id, result), func.cacheable(args)


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """RecoverAndLogHandler stamps every answer with the server's time."""
    return {"X-Server-Time": str(int(time.time())), **(extra or {})}


def _uri_call(node: ChainNode, method: str, request: Request) -> JSONResponse:
    func = FUNCS[method]
    if func.ws_only:
        return JSONResponse(
            rpc_error(URI_REQUEST_ID, METHOD_NOT_FOUND, "Method not found"),
            status_code=404,
            headers=_headers(),
        )
    query = {name: request.query_params.getlist(name)[0] for name in request.query_params}
    try:
        args = args_from_uri(func, query)
    except ArgError as exc:
        error = rpc_error(
            URI_REQUEST_ID,
            INVALID_PARAMS,
            "Invalid params",
            f"error converting http params to arguments: {exc}",
        )
        return JSONResponse(error, status_code=500, headers=_headers())
    try:
        result = _invoke(node, method, args)
    except _Failed as exc:
        error = rpc_error(URI_REQUEST_ID, INTERNAL_ERROR, "Internal error", str(exc))
        return JSONResponse(error, status_code=500, headers=_headers())
    return JSONResponse(
        rpc_result(URI_REQUEST_ID, result), headers=_headers(CACHEABLE if func.cacheable(args) else None)
    )


def _endpoints_page(host: str) -> str:
    """What a browser gets for `GET /` (an empty JSON-RPC body): the list of endpoints."""
    plain = sorted(name for name, func in FUNCS.items() if not func.args)
    with_args = sorted(name for name, func in FUNCS.items() if func.args)
    lines = ["<html><body>", "<br>Available endpoints:<br>"]
    lines += [f'<a href="//{html.escape(host)}/{name}">{name}</a><br>' for name in plain]
    lines.append("<br>Endpoints that require arguments:<br>")
    for name in with_args:
        link = f"//{html.escape(host)}/{name}?" + "&".join(f"{arg}=_" for arg, _ in FUNCS[name].args)
        lines.append(f'<a href="{link}">{link}</a></br>')
    lines.append("</body></html>")
    return "".join(lines)


def _jsonrpc_post(node: ChainNode, body: bytes, host: str) -> Response:
    if not body:
        return HTMLResponse(_endpoints_page(host), headers=_headers())
    try:
        requests = decode_requests(body)
    except ParseError as exc:
        error = rpc_error(None, PARSE_ERROR, "Parse error. Invalid JSON", str(exc))
        return JSONResponse(error, status_code=500, headers=_headers())
    responses: list[dict[str, Any]] = []
    cache = True
    for request in requests:
        if request.id is None:
            continue  # a notification: the server must not reply, not even inside a batch
        response, cacheable = _answer(node, request, websocket=False)
        responses.append(response)
        cache = cache and cacheable
    if not responses:
        return Response(status_code=200, headers=_headers())
    doc: Any = responses[0] if len(responses) == 1 else responses
    return JSONResponse(doc, headers=_headers(CACHEABLE if cache else None))


async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
    """The app's HTTP-error handler: a 404 is Go's `http.NotFound`, with the server's time."""
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found\n", status_code=404, headers=_headers())
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _add_uri_route(method: str) -> None:
    async def handler(request: Request, node: NodeDep) -> JSONResponse:
        return _uri_call(node, method, request)

    # Go's mux routes every HTTP method to the function; queries come from the URL.
    router.add_api_route(f"/{method}", handler, methods=["GET", "POST"], name=method)


for _name in FUNCS:
    _add_uri_route(_name)


@router.api_route("/", methods=["GET", "POST"])
async def jsonrpc(request: Request, node: NodeDep) -> Response:
    return _jsonrpc_post(node, await request.body(), request.headers.get("host", ""))


@router.websocket("/websocket")
async def websocket(ws: WebSocket, node: NodeDep) -> None:
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


def _ws_call(node: ChainNode, sub: Subscriber, text: str) -> dict[str, Any] | None:
    """Handle one websocket frame; returns the reply, if any (none for a notification)."""
    try:
        request = decode_request(text)
    except ParseError as exc:
        return rpc_error(None, PARSE_ERROR, "Parse error. Invalid JSON", str(exc))
    if request.id is None:
        return None
    if request.method not in ("subscribe", "unsubscribe", "unsubscribe_all"):
        return _answer(node, request, websocket=True)[0]
    func = FUNCS[request.method]
    try:
        args = args_from_json(func, request.params) if request.has_params else {"query": ""}
    except ArgError as exc:
        return rpc_error(
            request.id, INTERNAL_ERROR, "Internal error", f"error converting json params to arguments: {exc}"
        )
    query = str(args.get("query", ""))
    if request.method == "subscribe":
        if not query.strip():
            return rpc_error(
                request.id, INTERNAL_ERROR, "Internal error", "failed to parse query: empty query"
            )
        if query in sub.subscriptions:
            return rpc_error(request.id, INTERNAL_ERROR, "Internal error", "already subscribed")
        sub.subscriptions[query] = request.id
    elif request.method == "unsubscribe":
        if sub.subscriptions.pop(query, None) is None:
            return rpc_error(request.id, INTERNAL_ERROR, "Internal error", "subscription not found")
    else:
        sub.subscriptions.clear()
    return rpc_result(request.id, {})


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
