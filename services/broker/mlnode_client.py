"""The HTTP client of one MLNode version, over the node's keep-alive connections (`wire_client`).

Unlike the real client, every call checks the status: any non-2xx answer is an `MLNodeCallError`
carrying the status and the body, so a 404 from stop (no proxy route) or a 500 is never
mistaken for success. Every call has an explicit timeout sized for what it does (a stop may take
30 s on a real MLNode, `inference/up` blocks until the model is loaded).

Management calls (state, stop, inference/up, the models check, PoC) and forwarded requests
both go through `wire_client`, at a fraction of httpx's CPU per call (`bench/http_client.py`).
Tests hand `ClientBook` an httpx transport (in-process apps), and then both go through httpx.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.broker.models import NodeConfig
from services.broker.upstream import HttpxUpstream, Upstream, UpstreamError, WireUpstream
from services.broker.wire_client import Origin, WireError, WirePool, origin_and_target
from shared.versions import MLNodeVersion, NodeEndpoint

__all__ = [
    "Answer",
    "ClientBook",
    "ClientTimeouts",
    "HttpGateway",
    "HttpxCalls",
    "MLNodeCallError",
    "MLNodeClient",
    "NodeCalls",
    "WireCalls",
]

MAX_BODY_IN_ERROR = 500
MAX_URLS_KEPT = 256  # per node: its management URLs, and forwarded paths


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


@dataclass(frozen=True, slots=True)
class Answer:
    """A management call's answer, whatever the status."""

    method: str
    url: str
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json_object(self) -> dict[str, Any]:
        try:
            body = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MLNodeCallError(self.method, self.url, self.status, f"not JSON: {self.text}") from None
        if not isinstance(body, dict):
            raise MLNodeCallError(self.method, self.url, self.status, f"not an object: {self.text}")
        return body


class NodeCalls(Protocol):
    """How a node's calls reach it: management calls read whole, forwarded ones streamed."""

    async def call(self, method: str, url: str, body: bytes | None, read_s: float) -> Answer:
        """Raises `MLNodeCallError` when no answer comes."""
        ...

    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, read_s: float
    ) -> Upstream:
        """Raises `UpstreamError` when no answer comes."""
        ...

    async def aclose(self) -> None: ...


JSON_HEADERS = {"content-type": "application/json"}


class HttpxCalls:
    """Management calls over an httpx client (the in-process transports of the tests)."""

    def __init__(self, http: httpx.AsyncClient, timeouts: ClientTimeouts) -> None:
        self.http = http
        self.timeouts = timeouts

    async def call(self, method: str, url: str, body: bytes | None, read_s: float) -> Answer:
        try:
            resp = await self.http.request(
                method,
                url,
                content=body,
                headers=JSON_HEADERS if body is not None else None,
                timeout=self.timeouts.timeout(read_s),
            )
        except httpx.HTTPError as exc:
            raise MLNodeCallError(method, url, None, cause=f"{type(exc).__name__}: {exc}".strip()) from exc
        return Answer(method, url, resp.status_code, resp.content)

    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, read_s: float
    ) -> Upstream:
        request = self.http.build_request(
            method, url, content=body, headers=dict(headers), timeout=self.timeouts.timeout(read_s)
        )
        try:
            return HttpxUpstream(await self.http.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self.http.aclose()


class WireCalls:
    """Management calls of one node on the wire client: a keep-alive pool per origin."""

    def __init__(self, size: int, timeouts: ClientTimeouts, ssl_context: ssl.SSLContext | None) -> None:
        self.size = size
        self.timeouts = timeouts
        self.ssl_context = ssl_context
        self._pools: dict[Origin, WirePool] = {}
        self._split: dict[str, tuple[Origin, str]] = {}  # url -> (origin, target): a node's few URLs

    def _route(self, url: str) -> tuple[WirePool, str]:
        split = self._split.get(url)
        if split is None:
            if len(self._split) > MAX_URLS_KEPT:  # forwarded URLs carry queries: keep it bounded
                self._split.clear()
            split = self._split[url] = origin_and_target(url)
        origin, target = split
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = WirePool(
                origin, self.size, self.timeouts.connect_s, self.ssl_context
            )
        return pool, target

    async def call(self, method: str, url: str, body: bytes | None, read_s: float) -> Answer:
        try:
            pool, target = self._route(url)
            resp = await pool.request(method, target, body, read_s)
        except WireError as exc:
            raise MLNodeCallError(method, url, None, cause=str(exc)) from exc
        return Answer(method, url, resp.status, resp.body)

    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, read_s: float
    ) -> Upstream:
        try:
            pool, target = self._route(url)
            return WireUpstream(await pool.open(method, target, headers, body, read_s))
        except WireError as exc:
            raise UpstreamError(str(exc)) from exc

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


def _health_problem(answer: Answer) -> str | None:
    """Why a 2xx management health answer still means "not usable", or None when it is fine."""
    try:
        body = json.loads(answer.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and body.get("status") == "unhealthy":
        return "health says unhealthy"
    return None


class MLNodeClient:
    """Calls of one (node, version); URLs follow the real rule `http://host:port/{version}{segment}`."""

    def __init__(
        self,
        calls: NodeCalls,
        node_id: str,
        endpoint: NodeEndpoint,
        version: MLNodeVersion | None,
        timeouts: ClientTimeouts,
    ) -> None:
        self.calls = calls
        self.node_id = node_id
        self.endpoint = endpoint
        self.version = version
        self.timeouts = timeouts
        self.poc_url = endpoint.poc_url(version)
        self.inference_url = endpoint.inference_url(version)

    async def _call(self, method: str, url: str, read_s: float, body: Any = None) -> Answer:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        answer = await self.calls.call(method, url, content, read_s)
        if not 200 <= answer.status < 300:
            raise MLNodeCallError(method, url, answer.status, answer.text)
        return answer

    # -- management (PoC port) ---------------------------------------------------------------

    async def state(self) -> str:
        """`GET /api/v1/state` → STOPPED / INFERENCE / POW / TRAIN."""
        answer = await self._call("GET", f"{self.poc_url}/api/v1/state", self.timeouts.management_s)
        state = answer.json_object().get("state")
        if not isinstance(state, str):
            raise MLNodeCallError("GET", answer.url, answer.status, f"no state in {answer.text}")
        return state

    async def stop(self) -> None:
        await self._call("POST", f"{self.poc_url}/api/v1/stop", self.timeouts.stop_s)

    async def inference_up(self, model: str, args: tuple[str, ...], dtype: str) -> None:
        """Blocks until the model is loaded, as the real MLNode does."""
        body = {"model": model, "dtype": dtype, "additional_args": list(args)}
        await self._call("POST", f"{self.poc_url}/api/v1/inference/up", self.timeouts.up_s, body)

    async def pow_status(self) -> dict[str, Any]:
        answer = await self._call("GET", f"{self.poc_url}/api/v1/pow/status", self.timeouts.management_s)
        return answer.json_object()

    async def post_management(self, route: str, body: dict[str, Any]) -> None:
        """POST a management `route` (starting with '/') with a JSON body: PoC init, train/start."""
        await self._call("POST", f"{self.poc_url}{route}", self.timeouts.up_s, body)

    async def management_health(self) -> str | None:
        """`GET {poc}/health`: the container is up and sees its GPU (answers before the model loads).

        Returns the `service_state` the answer carries (the real `HealthResponse` has it), or None.
        """
        url = f"{self.poc_url}/health"
        answer = await self._call("GET", url, self.timeouts.management_s)
        problem = _health_problem(answer)
        if problem:
            raise MLNodeCallError("GET", url, answer.status, problem)
        try:
            state = answer.json_object().get("service_state")
        except MLNodeCallError:
            return None  # healthy, but not the real body: the state is asked for separately
        return state if isinstance(state, str) else None

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
        answer = await self._call("GET", url, self.timeouts.management_s)
        data = answer.json_object().get("data")
        if not isinstance(data, list) or not data:
            raise MLNodeCallError("GET", url, answer.status, f"no model is loaded: {answer.text[:200]}")

    async def open(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Upstream:
        """Forward a request as it is (`url` from `inference_url` or `poc_url`); the caller relays
        the answer and closes it. Raises `UpstreamError` when no answer comes."""
        return await self.calls.open(method, url, headers, body, self.timeouts.inference_s)


_NodePools = tuple[NodeEndpoint, int, NodeCalls]


class ClientBook:
    """One client per (node, version); the versions of a node share that node's connections.

    A pool per node rather than one for all: one pool serving hundreds of nodes at a switch does
    bookkeeping for all of them on every call, hundreds of small pools do not. A node's pool is
    sized from its `max_concurrent` plus room for management calls. Clients are rebuilt when an
    admin edit changes the node's address (the real dapi's stale-address bug).
    """

    MANAGEMENT_HEADROOM = 8

    def __init__(self, timeouts: ClientTimeouts, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeouts = timeouts
        self.transport = transport  # tests pass an in-process transport
        self._ssl = httpx.create_ssl_context() if transport is None else None  # built once, shared
        self._pools: dict[str, _NodePools] = {}
        self._clients: dict[tuple[str, MLNodeVersion | None], MLNodeClient] = {}
        self._retired: list[_NodePools] = []

    def _pool(self, node: NodeConfig) -> NodeCalls:
        size = node.max_concurrent + self.MANAGEMENT_HEADROOM
        found = self._pools.get(node.id)
        if found is not None and found[:2] == (node.endpoint, size):
            return found[2]
        if found is not None:
            self._retired.append(found)  # requests may still run on it; closed at shutdown
        calls: NodeCalls
        if self.transport is not None:
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
            calls = HttpxCalls(httpx.AsyncClient(transport=self.transport, limits=limits), self.timeouts)
        else:
            calls = WireCalls(size, self.timeouts, self._ssl)
        self._pools[node.id] = (node.endpoint, size, calls)
        return calls

    def get(self, node: NodeConfig, version: MLNodeVersion | None) -> MLNodeClient:
        calls = self._pool(node)
        key = (node.id, version)
        client = self._clients.get(key)
        if client is None or client.calls is not calls:
            client = MLNodeClient(calls, node.id, node.endpoint, version, self.timeouts)
            self._clients[key] = client
        return client

    def forget(self, node_id: str) -> None:
        for key in [k for k in self._clients if k[0] == node_id]:
            del self._clients[key]
        found = self._pools.pop(node_id, None)
        if found is not None:
            self._retired.append(found)

    async def aclose(self) -> None:
        for _, _, calls in [*self._pools.values(), *self._retired]:
            await calls.aclose()
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

    async def management_health(self, node: NodeConfig, version: MLNodeVersion) -> str | None:
        return await self.book.get(node, version).management_health()

    def forget(self, node_id: str) -> None:
        self.book.forget(node_id)
