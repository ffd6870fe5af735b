"""Relaying an MLNode's answer to the broker's client: headers passed on, SSE streamed, one release.

Both the inference gateway (`forwarder`) and the node endpoint relay this way. The caller's
`done` (giving a lease back) runs exactly once, when the last byte went out or the client went
away, including when a stream is never iterated (starlette's background task runs it then).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import NamedTuple

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from services.broker.upstream import Upstream, UpstreamError

__all__ = ["Relayed", "answer_headers", "passed_headers", "relay"]

# Request headers passed on; everything else (host, hop-by-hop, content-length) is the client's own.
# The real API node's Go client sends no Content-Type on its POSTs: none is added.
_PASS_REQUEST = frozenset({"content-type", "accept", "authorization", "x-request-id", "user-agent"})
# Response headers not passed on: hop-by-hop ones, and the encoding when the client decoded the body.
_DROP_RESPONSE = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in _PASS_REQUEST}


def answer_headers(upstream: Upstream) -> dict[str, str]:
    drop = _DROP_RESPONSE if upstream.decoded else _DROP_RESPONSE - {"content-encoding"}
    return {k: v for k, v in upstream.headers if k not in drop}


class Relayed(NamedTuple):
    response: Response
    broken: bool  # the MLNode broke off a non-streamed answer: `response` is the caller's 502


async def relay(
    upstream: Upstream,
    headers: dict[str, str],
    done: Callable[[], None],
    broken: Callable[[UpstreamError], Response],
) -> Relayed:
    """Stream an SSE answer chunk by chunk, read any other whole; `done` runs once at the end."""
    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            done()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.chunks():
                yield chunk
        finally:
            await upstream.aclose()
            finish()

    async def close_and_finish() -> None:
        await upstream.aclose()  # a stream never iterated still gives its connection back
        finish()

    content_type = next((v for k, v in upstream.headers if k == "content-type"), "")
    if content_type.startswith("text/event-stream"):
        response = StreamingResponse(
            chunks(),
            status_code=upstream.status,
            headers=headers,
            background=BackgroundTask(close_and_finish),
        )
        return Relayed(response, broken=False)
    try:
        content = b"".join([chunk async for chunk in upstream.chunks()])
    except UpstreamError as exc:
        return Relayed(broken(exc), broken=True)
    finally:
        await upstream.aclose()
        finish()
    return Relayed(Response(content=content, status_code=upstream.status, headers=headers), broken=False)
