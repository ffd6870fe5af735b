"""The HTTP client of one MLNode version, over a shared httpx connection pool.

Unlike the real client, every call checks the status: any non-2xx answer is an `MLNodeCallError`
carrying the status and the body, so a 404 from stop (no proxy route) or a 500 is never
mistaken for success. Every call has an explicit timeout sized for what it does (a stop may take
30 s on a real MLNode, `inference/up` blocks until the model is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from services.broker.models import NodeConfig
from shared.versions import MLNodeVersion, NodeEndpoint

__all__ = ["ClientBook", "ClientTimeouts", "HttpGateway", "MLNodeCallError", "MLNodeClient"]

MAX_BODY_IN_ERROR = 500


class MLNodeCallError(Exception):
    """A call that did not succeed; `status` is None when no answer came (refused, timeout, reset)."""

    def __init__(self, method: str, url: str, status: int | None, body: str = "", cause: str = "") -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        what = (
            f"{status} {body[:MAX_BODY_IN_ERROR]}".rstrip() if status is not None else f"no answer ({cause})"
        )
        super().__init__(f"{method} {url}: {what}")


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    connect_s: float = 2.0
    management_s: float = 10.0  # state, pow status, health
    stop_s: float = 40.0  # the real stop waits up to 30 s for inference to go down
    up_s: float = 900.0  # inference/up blocks until the model is loaded
    inference_s: float = 900.0  # a long generation; the real proxy's read timeout

    def timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=read_s, write=read_s, pool=self.connect_s)


def _health_problem(resp: httpx.Response) -> str | None:
    """Why a 2xx management health answer still means "not usable", or None when it is fine."""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and body.get("status") == "unhealthy":
        return "health says unhealthy"
    return None


class MLNodeClient:
    """Calls of one (node, version); the URLs follow the real rule `http://host:port/{version}{segment}`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        node_id: str,
        endpoint: NodeEndpoint,
        version: MLNodeVersion | None,
        timeouts: ClientTimeouts,
    ) -> None:
        self.http = http
        self.node_id = node_id
        self.endpoint = endpoint
        self.version = version
        self.timeouts = timeouts
        self.poc_url = endpoint.poc_url(version)
        self.inference_url = endpoint.inference_url(version)

    async def _call(self, method: str, url: str, read_s: float, body: Any = None) -> httpx.Response:
        try:
            resp = await self.http.request(method, url, json=body, timeout=self.timeouts.timeout(read_s))
        except httpx.HTTPError as exc:
            raise MLNodeCallError(method, url, None, cause=f"{type(exc).__name__}: {exc}".strip()) from exc
        if not 200 <= resp.status_code < 300:
            raise MLNodeCallError(method, url, resp.status_code, resp.text)
        return resp

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MLNodeCallError(
                resp.request.method, str(resp.request.url), resp.status_code, f"not JSON: {resp.text}"
            ) from None
        if not isinstance(body, dict):
            raise MLNodeCallError(
                resp.request.method, str(resp.request.url), resp.status_code, f"not an object: {resp.text}"
            )
        return body

    # -- management (PoC port) ---------------------------------------------------------------

    async def state(self) -> str:
        """`GET /api/v1/state` → STOPPED / INFERENCE / POW / TRAIN."""
        resp = await self._call("GET", f"{self.poc_url}/api/v1/state", self.timeouts.management_s)
        state = self._json(resp).get("state")
        if not isinstance(state, str):
            raise MLNodeCallError("GET", str(resp.request.url), resp.status_code, f"no state in {resp.text}")
        return state

    async def stop(self) -> None:
        await self._call("POST", f"{self.poc_url}/api/v1/stop", self.timeouts.stop_s)

    async def inference_up(self, model: str, args: tuple[str, ...], dtype: str) -> None:
        """Blocks until the model is loaded, as the real MLNode does."""
        body = {"model": model, "dtype": dtype, "additional_args": list(args)}
        await self._call("POST", f"{self.poc_url}/api/v1/inference/up", self.timeouts.up_s, body)

    async def inference_up_status(self) -> dict[str, Any]:
        resp = await self._call(
            "GET", f"{self.poc_url}/api/v1/inference/up/status", self.timeouts.management_s
        )
        return self._json(resp)

    async def inference_down(self) -> None:
        await self._call("POST", f"{self.poc_url}/api/v1/inference/down", self.timeouts.stop_s)

    async def pow_status(self) -> dict[str, Any]:
        resp = await self._call("GET", f"{self.poc_url}/api/v1/pow/status", self.timeouts.management_s)
        return self._json(resp)

    async def post_management(self, route: str, body: dict[str, Any]) -> None:
        """POST a management `route` (starting with '/') with a JSON body: PoC init, train/start."""
        await self._call("POST", f"{self.poc_url}{route}", self.timeouts.up_s, body)

    async def management_health(self) -> None:
        """`GET {poc}/health`: the container is up and sees its GPU (answers before the model loads)."""
        url = f"{self.poc_url}/health"
        resp = await self._call("GET", url, self.timeouts.management_s)
        problem = _health_problem(resp)
        if problem:
            raise MLNodeCallError("GET", url, resp.status_code, problem)

    # -- inference port ------------------------------------------------------------------------

    async def serving(self) -> None:
        """The model answers: `GET {inference}/v1/models` lists at least one model.

        Not `/health`: the real MLNode answers it 200 "healthy" while a model loads (its
        inference manager only counts as active once the load is done) and, on port 8080, it
        is the management health anyway. `/v1/*` always goes to vLLM: the real proxy answers
        503 "No vLLM backend available" (port 8080) or nothing listens (port 5000) until the
        model is loaded.
        """
        url = f"{self.inference_url}/v1/models"
        resp = await self._call("GET", url, self.timeouts.management_s)
        data = self._json(resp).get("data")
        if not isinstance(data, list) or not data:
            raise MLNodeCallError("GET", url, resp.status_code, f"no model is loaded: {resp.text[:200]}")

    async def models(self) -> dict[str, Any]:
        resp = await self._call("GET", f"{self.inference_url}/v1/models", self.timeouts.management_s)
        return self._json(resp)

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self._call("POST", f"{self.inference_url}/tokenize", self.timeouts.inference_s, body)
        return self._json(resp)

    async def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming completion; the forwarder uses `inference_request` to stream instead."""
        url = f"{self.inference_url}/v1/chat/completions"
        resp = await self._call("POST", url, self.timeouts.inference_s, {**body, "stream": False})
        return self._json(resp)

    def inference_request(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Request:
        """A request to forward as it is (streamed by the caller); `path` starts with '/'."""
        return self.http.build_request(
            "POST",
            f"{self.inference_url}{path}",
            content=content,
            headers=headers,
            timeout=self.timeouts.timeout(self.timeouts.inference_s),
        )


class ClientBook:
    """One client per (node, version); the versions of a node share that node's connection pool.

    A pool per node rather than one for all: httpx's pool does work proportional to the requests
    and connections it holds on every change, so one pool serving hundreds of nodes at a switch
    spends seconds on bookkeeping, while hundreds of small pools do not. A node's pool is sized
    from its `max_concurrent` plus room for management calls. Clients are rebuilt when an admin
    edit changes the node's address (the real dapi's stale-address bug).
    """

    MANAGEMENT_HEADROOM = 8

    def __init__(self, timeouts: ClientTimeouts, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeouts = timeouts
        self.transport = transport  # tests pass an in-process transport
        self._ssl = httpx.create_ssl_context() if transport is None else None  # built once, shared
        self._pools: dict[str, tuple[NodeEndpoint, int, httpx.AsyncClient]] = {}
        self._clients: dict[tuple[str, MLNodeVersion | None], MLNodeClient] = {}
        self._retired: list[httpx.AsyncClient] = []

    def _pool(self, node: NodeConfig) -> httpx.AsyncClient:
        size = node.max_concurrent + self.MANAGEMENT_HEADROOM
        found = self._pools.get(node.id)
        if found is not None and found[:2] == (node.endpoint, size):
            return found[2]
        if found is not None:
            self._retired.append(found[2])  # requests may still run on it; closed at shutdown
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        if self.transport is not None:
            http = httpx.AsyncClient(transport=self.transport, limits=limits)
        else:
            http = httpx.AsyncClient(verify=self._ssl or True, limits=limits)
        self._pools[node.id] = (node.endpoint, size, http)
        return http

    def get(self, node: NodeConfig, version: MLNodeVersion | None) -> MLNodeClient:
        http = self._pool(node)
        key = (node.id, version)
        client = self._clients.get(key)
        if client is None or client.http is not http:
            client = MLNodeClient(http, node.id, node.endpoint, version, self.timeouts)
            self._clients[key] = client
        return client

    def forget(self, node_id: str) -> None:
        for key in [k for k in self._clients if k[0] == node_id]:
            del self._clients[key]
        found = self._pools.pop(node_id, None)
        if found is not None:
            self._retired.append(found[2])

    async def aclose(self) -> None:
        for http in [*(p[2] for p in self._pools.values()), *self._retired]:
            await http.aclose()
        self._pools.clear()
        self._clients.clear()
        self._retired.clear()


class HttpGateway:
    """The coordinator's `Gateway` over real clients: looks the client up for each call."""

    def __init__(self, book: ClientBook, dtype: str) -> None:
        self.book = book
        self.dtype = dtype

    async def state(self, node: NodeConfig, version: MLNodeVersion) -> str:
        return await self.book.get(node, version).state()

    async def stop(self, node: NodeConfig, version: MLNodeVersion) -> None:
        await self.book.get(node, version).stop()

    async def inference_up(
        self,
        node: NodeConfig,
        version: MLNodeVersion,
        model: str,
        args: tuple[str, ...],
        dtype: str | None = None,
    ) -> None:
        await self.book.get(node, version).inference_up(model, args, dtype or self.dtype)

    async def pow_status(self, node: NodeConfig, version: MLNodeVersion) -> str:
        body = await self.book.get(node, version).pow_status()
        status = body.get("status")
        if not isinstance(status, str):
            raise MLNodeCallError("GET", "pow/status", 200, f"no status in {body}")
        return status

    async def start_work(
        self, node: NodeConfig, version: MLNodeVersion, route: str, body: dict[str, Any]
    ) -> None:
        await self.book.get(node, version).post_management(route, body)

    async def serving(self, node: NodeConfig, version: MLNodeVersion) -> None:
        await self.book.get(node, version).serving()

    async def management_health(self, node: NodeConfig, version: MLNodeVersion) -> None:
        await self.book.get(node, version).management_health()

    def forget(self, node_id: str) -> None:
        self.book.forget(node_id)
