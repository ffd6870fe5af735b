"""Forwarding inference to a ready node: wait (bounded) for one, stream the answer through.

A request that arrives mid-switch waits for a node to be ready on the new version instead of
failing; only when the wait runs out does the caller get a 503 that says why. A node that refuses
the connection or answers 502/503/504 before any byte was relayed is given up for another try
(the request did no work there), so a node dying under load does not fail requests either.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse, Response

from services.broker.client_gone import ClientGone, Disconnected, acquire_while_connected
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import ClientBook
from services.broker.pool import Lease, NodePool, NoNodeReady
from services.broker.relay import answer_headers, passed_headers, relay
from services.broker.upstream import Upstream, UpstreamError
from shared.logging import get_logger

__all__ = ["NODE_HEADER", "Forwarder"]

log = get_logger(__name__)

NODE_HEADER = "x-broker-node"
RETRY_STATUSES = frozenset({502, 503, 504})
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first; nobody reads it


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """OpenAI-style error body, so clients that parse `error.message` show the reason."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class Forwarder:
    def __init__(
        self, pool: NodePool, book: ClientBook, metrics: BrokerMetrics, wait_s: float, attempts: int
    ) -> None:
        self.pool = pool
        self.book = book
        self.metrics = metrics
        self.wait_s = wait_s
        self.attempts = attempts

    async def forward(
        self, route: str, body: bytes, headers: dict[str, str], gone: Disconnected | None = None
    ) -> Response:
        """`gone` returns when the client disconnects: a request still waiting for a node then
        gives up its place (499, counted as `client_gone`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.wait_s
        passed = passed_headers(headers)
        last_error = ""
        failed: set[str] = set()
        for attempt in range(1, self.attempts + 1):
            try:
                lease = await acquire_while_connected(
                    self.pool, max(deadline - loop.time(), 0.0), gone, frozenset(failed)
                )
            except ClientGone:
                self.metrics.forwarded_total.labels(route=route, result="client_gone").inc()
                return Response(status_code=CLIENT_CLOSED)
            except NoNodeReady as exc:
                self.metrics.forwarded_total.labels(route=route, result="no_node").inc()
                waited = loop.time() - started
                detail = f"; last attempt: {last_error}" if last_error else ""
                log.warning(
                    "no node for request",
                    extra={"route": route, "waited_s": round(waited, 3), "reason": str(exc)},
                )
                return _error(
                    503,
                    f"no MLNode could take the request after {waited:.1f}s: {exc}{detail}",
                    "service_unavailable",
                )
            if attempt == 1:
                self.metrics.forward_wait_seconds.observe(loop.time() - started)
            client = self.book.get(lease.node, lease.version)
            try:
                upstream = await client.open("POST", f"{client.inference_url}{route}", body, passed)
            except UpstreamError as exc:
                self.pool.release(lease)
                failed.add(lease.node.id)
                last_error = f"{lease.node.id}: {exc}"
                log.warning(
                    "forward failed, retrying",
                    extra={
                        "route": route,
                        "node": lease.node.id,
                        "version": lease.version.raw,
                        "error": last_error,
                    },
                )
                continue
            if upstream.status in RETRY_STATUSES and attempt < self.attempts:
                await upstream.aclose()
                self.pool.release(lease)
                failed.add(lease.node.id)
                last_error = f"{lease.node.id} answered {upstream.status}"
                continue
            return await self._relay(route, upstream, lease)
        self.metrics.forwarded_total.labels(route=route, result="error").inc()
        return _error(502, f"every attempt to reach an MLNode failed: {last_error}", "bad_gateway")

    async def _relay(self, route: str, upstream: Upstream, lease: Lease) -> Response:
        """Pass the answer through chunk by chunk; the lease ends when the last byte went out."""
        headers = answer_headers(upstream)
        headers[NODE_HEADER] = lease.node.id
        relayed = await relay(
            upstream,
            headers,
            lambda: self.pool.release(lease),
            lambda exc: _error(502, f"{lease.node.id} broke off its answer: {exc}", "bad_gateway"),
        )
        result = "ok" if upstream.status < 400 else f"http_{upstream.status}"
        self.metrics.forwarded_total.labels(route=route, result="error" if relayed.broken else result).inc()
        return relayed.response
