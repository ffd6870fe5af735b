"""The prefix dispatcher in front of the mock MLNode's routes.

`PrefixDispatch` strips the optional `/{version}/{node}` prefix, applies injected faults, stamps
every answer with the version and node that produced it and records the call; the FastAPI app
behind it serves the addressed instance (found under `TARGET_KEY` in the scope) and, unprefixed,
the `/mock/` control API.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mock_mlnode.faults import FaultAction
from mock_mlnode.instances import MockNode
from mock_mlnode.routing import Target
from shared.logging import get_logger

__all__ = ["NODE_HEADER", "TARGET_KEY", "VERSION_HEADER", "ConnectionDropped", "PrefixDispatch"]

VERSION_HEADER = "x-mlnode-version"
NODE_HEADER = "x-mlnode-node"
TARGET_KEY = "mlnode.target"

log = get_logger(__name__)


class ConnectionDropped(Exception):
    """Raised after a response has started, so the server closes the connection mid-answer."""


class PrefixDispatch:
    def __init__(self, app: ASGIApp, mock: MockNode) -> None:
        self.app = app
        self.mock = mock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path == "/mock" or path.startswith("/mock/"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        target = self.mock.resolve(path)
        if target is None:
            detail = (
                f"this MLNode does not serve {path.split('/')[1]!r}; versions: {self.mock.settings.versions}"
            )
            self._record(method, path, Target("", "", path), 404)
            await _send_json(send, 404, {"detail": detail})
            return

        decision = self.mock.faults.decide(method, target.route, target.version, target.node)
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.action is FaultAction.EXIT:
            log.warning("injected exit", extra={"route": target.route, "version": target.version})
            os._exit(decision.exit_code)
        if decision.action is FaultAction.FAIL:
            self._record(method, path, target, decision.status, "fail")
            await _send_json(
                send, decision.status, {"detail": "injected fault"}, _stamp([], target), reason="injected"
            )
            return
        if decision.action is FaultAction.DROP:
            self._record(method, path, target, None, "drop")
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]}
            )
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            raise ConnectionDropped(f"injected connection drop on {method} {path}")

        child = dict(scope)
        child["path"] = target.route
        child["raw_path"] = target.route.encode()
        child[TARGET_KEY] = target
        status: list[int] = []

        async def stamped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message = {**message, "headers": _stamp(list(message.get("headers", [])), target)}
            await send(message)

        try:
            await self.app(child, receive, stamped_send)
        finally:
            self._record(method, path, target, status[0] if status else None)

    def _record(
        self, method: str, path: str, target: Target, status: int | None, fault: str | None = None
    ) -> None:
        self.mock.log.add(
            ts=time.time(),
            method=method,
            path=path,
            route=target.route,
            version=target.version,
            node=target.node,
            status=status,
            fault=fault,
        )


def _stamp(headers: list[tuple[bytes, bytes]], target: Target) -> list[tuple[bytes, bytes]]:
    return [
        *headers,
        (VERSION_HEADER.encode(), target.version.encode()),
        (NODE_HEADER.encode(), target.node.encode()),
    ]


async def _send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
    reason: str = "",
) -> None:
    payload = json.dumps(body).encode()
    all_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if reason:
        all_headers.append((b"x-mock-fault", reason.encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers + (headers or [])})
    await send({"type": "http.response.body", "body": payload})
