"""The mock MLNode as an ASGI app: the real API surface, per-(version, node) state, faults and a log.

`PrefixDispatch` strips the optional `/{version}/{node}` prefix, applies injected faults, stamps
every answer with the version and node that produced it and records the call; the FastAPI app
behind it implements the MLNode routes on the addressed instance and the `/mock/` control API.

It answers what the real MLNode (v3.0.8, gonka v0.2.4) answers to the real API node's requests:
JSON bodies read without a Content-Type, `inference/up/status` with the real status values,
`/health` and `/readyz` 200 while a model loads, the GPU and model-cache routes, the PoW and
training answers as the real routes write them. Where it differs, on purpose:

- One port serves the management routes and vLLM's (`/v1/*`, `/tokenize`), as the real port
  8080 does. The real backward-compatibility port 5000, on which nothing listens until vLLM is
  up, is not modelled, so `/health` here is always the management health; the broker therefore
  judges "serving" by `/v1/models`, which behaves the same on both real ports.
- The versions of a node share a GPU lock, so a second version cannot take a GPU in use. The
  real MLNode has no such lock: the load fails in CUDA and FastAPI answers a bare 500, which is
  what `gpu_busy_status=500` (the default) answers; 409 names the holder, for debugging.
- `/health` is not cached for 5 s as the real one is: tests would only wait longer.
- No signature check on the GPU and model routes (later MLNodes have one) and no watchdog exit.
- The `/mock/*` control API and the `x-mlnode-version` / `x-mlnode-node` answer headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mock_mlnode.completions import ChatRequest, Generation, chat_completion, sse_chunks, tokenize
from mock_mlnode.faults import FaultAction, FaultBook, FaultRule
from mock_mlnode.gpu_devices import DRIVER_INFO, device, devices_answer
from mock_mlnode.gpu_lock import FileGpuLock, lock_path_for
from mock_mlnode.model_cache import ModelCache, ModelRef
from mock_mlnode.request_log import RequestLog
from mock_mlnode.routing import Target, resolve
from mock_mlnode.settings import MockMLNodeSettings
from mock_mlnode.state import GpuBusy, MLNodeError, NodeMachine, NotReady, PowStatus
from shared.logging import get_logger

__all__ = ["NODE_HEADER", "VERSION_HEADER", "Instance", "MockNode", "create_app"]

VERSION_HEADER = "x-mlnode-version"
NODE_HEADER = "x-mlnode-node"
TARGET_KEY = "mlnode.target"

log = get_logger(__name__)


class ConnectionDropped(Exception):
    """Raised after a response has started, so the server closes the connection mid-answer."""


@dataclass
class Instance:
    """One (version, node): the state machine plus what the HTTP layer tracks around it."""

    machine: NodeMachine
    in_flight: int = 0
    load_task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        m = self.machine
        return {
            "version": m.version,
            "node": m.node,
            "state": m.state.value,
            "model": m.model,
            "inference": m.inference.value,
            "pow": m.pow.value,
            "train_running": m.train_running,
            "in_flight": self.in_flight,
            "generation": m.generation,
            "gpu_held": m.gpu.held,
        }


@dataclass
class MockNode:
    settings: MockMLNodeSettings
    clock: Callable[[], float] = time.monotonic
    faults: FaultBook = field(default_factory=FaultBook)
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    model_caches: dict[str, ModelCache] = field(default_factory=dict)  # per node, shared by versions

    def __post_init__(self) -> None:
        self.log = RequestLog(self.settings.request_log_limit)
        self._versions = frozenset(self.settings.versions)
        self._nodes = frozenset(self.settings.nodes)
        for node in self.settings.nodes:
            self.model_caches[node] = ModelCache(download_s=self.settings.model_download_s)
            path = lock_path_for(self.settings.gpu_lock_path, node)
            for version in self.settings.versions:
                gpu = FileGpuLock(path, f"{node}@{version}")
                self.instances[(version, node)] = Instance(NodeMachine(node=node, version=version, gpu=gpu))

    def resolve(self, path: str) -> Target | None:
        return resolve(
            path, self._versions, self._nodes, self.settings.default_version, self.settings.default_node
        )

    def get(self, target: Target) -> Instance:
        return self.instances[(target.version, target.node)]


# --- the prefix dispatcher --------------------------------------------------------------------


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


# --- request bodies ----------------------------------------------------------------------------


class InferenceInitRequest(BaseModel):
    """The real `InferenceInitRequest`: `dtype` has no default there either (422 without it)."""

    model: str = Field(min_length=1)
    dtype: str
    additional_args: list[str] = Field(default_factory=list)


class PowInitRequest(BaseModel):
    """`PowInitRequestUrl`: the fields the mock checks; the model dimensions pass through."""

    model_config = ConfigDict(extra="allow")

    node_id: int = -1
    node_count: int = -1
    block_hash: str = ""
    block_height: int = 0
    public_key: str = ""
    batch_size: int = 0
    r_target: float = 0.0
    fraud_threshold: float = 0.0
    params: dict[str, Any] = Field(default_factory=dict)
    url: str = ""


class ProofBatch(BaseModel):
    """The real `ProofBatch` dataclass, `node_id` included (the API node sends it)."""

    model_config = ConfigDict(extra="allow")

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    model: str | None = None


class ExitRequest(BaseModel):
    code: Annotated[int, Field(ge=0, le=255)] = 1


# --- dependencies ------------------------------------------------------------------------------


def _instance(request: Request) -> Instance:
    mock: MockNode = request.app.state.mock
    target: Target | None = request.scope.get(TARGET_KEY)
    if target is None:  # only when the app is served without PrefixDispatch
        target = Target(mock.settings.default_version, mock.settings.default_node, request.url.path)
    return mock.get(target)


InstanceDep = Annotated[Instance, Depends(_instance)]


def _conflict_check(service: str) -> Callable[[Instance], None]:
    """The real routers' dependency: 409 when another service runs."""

    def check(inst: InstanceDep) -> None:
        inst.machine.check_conflict(service)

    return check


# --- the app -----------------------------------------------------------------------------------


def create_app(settings: MockMLNodeSettings, mock: MockNode | None = None) -> ASGIApp:
    mock = mock or MockNode(settings)
    # The real MLNode's FastAPI (0.115) reads a JSON body whatever the Content-Type, and the
    # real API node sends none; a strict app would answer those calls 422.
    api = FastAPI(title="mock MLNode", version=settings.default_version, strict_content_type=False)
    api.state.mock = mock

    @api.exception_handler(MLNodeError)
    async def _mlnode_error(request: Request, exc: MLNodeError) -> Response:
        if isinstance(exc, GpuBusy) and settings.gpu_busy_status == 500:
            # The real MLNode has no GPU lock: the load dies in CUDA and FastAPI answers a bare 500.
            log.warning("GPU busy, answering 500", extra={"detail": str(exc)})
            return PlainTextResponse("Internal Server Error", status_code=500)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    ok = {"status": "OK"}

    # management ---------------------------------------------------------------------------

    @api.get("/api/v1/state")
    async def get_state(inst: InstanceDep) -> dict[str, str]:
        return {"state": inst.machine.state.value}

    @api.post("/api/v1/stop")
    async def stop(inst: InstanceDep) -> dict[str, str]:
        if settings.stop_s:
            await asyncio.sleep(settings.stop_s)
        _stop(inst)
        log.info("stopped", extra={"version": inst.machine.version, "node": inst.machine.node})
        return ok

    def _stop(inst: Instance) -> None:
        inst.machine.stop()
        if inst.load_task is not None:
            inst.load_task.cancel()
            inst.load_task = None

    inference = [Depends(_conflict_check("inference"))]

    async def _load(inst: Instance, generation: int) -> None:
        if settings.model_load_s:
            await asyncio.sleep(settings.model_load_s)
        inst.machine.finish_inference(generation)

    def _begin(inst: Instance, body: InferenceInitRequest) -> asyncio.Task[None]:
        generation = inst.machine.begin_inference(body.model, mock.clock())
        task = asyncio.create_task(_load(inst, generation))
        inst.load_task = task
        return task

    @api.post("/api/v1/inference/up", dependencies=inference)
    async def inference_up(inst: InstanceDep, body: InferenceInitRequest) -> dict[str, str]:
        task = _begin(inst, body)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        if inst.machine.loaded_model is None:
            raise MLNodeError("inference startup did not complete (stopped while loading)")
        return ok

    @api.post("/api/v1/inference/up/async", dependencies=inference)
    async def inference_up_async(inst: InstanceDep, body: InferenceInitRequest) -> dict[str, str]:
        _begin(inst, body)
        return {"status": "starting", "message": f"Inference startup initiated for {body.model}"}

    @api.get("/api/v1/inference/up/status", dependencies=inference)
    async def inference_up_status(inst: InstanceDep) -> dict[str, Any]:
        return inst.machine.startup_status(mock.clock())

    @api.post("/api/v1/inference/down", dependencies=inference)
    async def inference_down(inst: InstanceDep) -> dict[str, str]:
        if inst.machine.state.value == "INFERENCE":
            _stop(inst)
        return ok

    pow_deps = [Depends(_conflict_check("pow"))]

    def _pow_answer(inst: Instance) -> dict[str, Any]:
        return {"status": "OK", "pow_status": inst.machine.pow_status()}

    @api.post("/api/v1/pow/init", dependencies=pow_deps)
    async def pow_init(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
        inst.machine.pow_init(body.model_dump())
        return _pow_answer(inst)

    @api.post("/api/v1/pow/init/generate", dependencies=pow_deps)
    async def pow_init_generate(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
        inst.machine.pow_init(body.model_dump(), PowStatus.GENERATING)
        return _pow_answer(inst)

    @api.post("/api/v1/pow/init/validate", dependencies=pow_deps)
    async def pow_init_validate(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
        inst.machine.pow_init(body.model_dump(), PowStatus.VALIDATING)
        return _pow_answer(inst)

    @api.post("/api/v1/pow/phase/generate", dependencies=pow_deps)
    async def pow_phase_generate(inst: InstanceDep) -> dict[str, Any]:
        inst.machine.pow_phase(PowStatus.GENERATING)
        return _pow_answer(inst)

    @api.post("/api/v1/pow/phase/validate", dependencies=pow_deps)
    async def pow_phase_validate(inst: InstanceDep) -> dict[str, Any]:
        inst.machine.pow_phase(PowStatus.VALIDATING)
        return _pow_answer(inst)

    @api.post("/api/v1/pow/validate", dependencies=pow_deps)
    async def pow_validate(inst: InstanceDep, body: ProofBatch) -> None:
        inst.machine.pow_validate()  # the real route returns nothing: `null`

    @api.get("/api/v1/pow/status", dependencies=pow_deps)
    async def pow_status(inst: InstanceDep) -> dict[str, Any]:
        return inst.machine.pow_status()

    @api.post("/api/v1/pow/stop", dependencies=pow_deps)
    async def pow_stop(inst: InstanceDep) -> dict[str, Any]:
        if not inst.machine.pow_stop():
            return {"status": "OK", "pow_status": "PoW is not running"}
        return _pow_answer(inst)

    train_deps = [Depends(_conflict_check("train"))]

    @api.post("/api/v1/train/start", dependencies=train_deps)
    async def train_start(inst: InstanceDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, str]:
        inst.machine.train_start()
        return {"status": "Training started"}

    @api.post("/api/v1/train/stop", dependencies=train_deps)
    async def train_stop(inst: InstanceDep) -> dict[str, str]:
        inst.machine.train_stop()
        return {"status": "Training stopped"}

    @api.get("/api/v1/train/status", dependencies=train_deps)
    async def train_status(inst: InstanceDep) -> dict[str, bool]:
        return {"status": inst.machine.train_running}

    # health ---------------------------------------------------------------------------------

    def _device(inst: Instance) -> dict[str, Any]:
        return device(inst.machine.gpu, settings.gpu_name, settings.gpu_memory_mb)

    @api.get("/health")
    @api.get("/livez")
    async def health(inst: InstanceDep) -> JSONResponse:
        # 200 while a model loads, as on the real MLNode (see `NodeMachine.healthy`).
        body = inst.machine.health(_device(inst))
        return JSONResponse(body, status_code=200 if inst.machine.healthy else 503)

    @api.get("/readyz")
    async def readyz(inst: InstanceDep) -> JSONResponse:
        ready = inst.machine.healthy
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    # GPU and model cache (added to the real MLNode after 3.0.6) -----------------------------

    @api.get("/api/v1/gpu/devices")
    async def gpu_devices(inst: InstanceDep) -> dict[str, Any]:
        return devices_answer(inst.machine.gpu, settings.gpu_name, settings.gpu_memory_mb)

    @api.get("/api/v1/gpu/driver")
    async def gpu_driver() -> dict[str, str]:
        return DRIVER_INFO

    def _cache(inst: Instance) -> ModelCache:
        return mock.model_caches[inst.machine.node]

    @api.post("/api/v1/models/status")
    async def model_status(inst: InstanceDep, body: ModelRef) -> dict[str, Any]:
        return _cache(inst).status(body, mock.clock())

    @api.post("/api/v1/models/download", status_code=202)
    async def model_download(inst: InstanceDep, body: ModelRef) -> dict[str, Any]:
        return _cache(inst).download(body, mock.clock())

    @api.delete("/api/v1/models")
    async def model_delete(inst: InstanceDep, body: ModelRef) -> dict[str, Any]:
        return _cache(inst).delete(body, mock.clock())

    @api.get("/api/v1/models/list")
    async def model_list(inst: InstanceDep) -> dict[str, Any]:
        return _cache(inst).listing(mock.clock())

    @api.get("/api/v1/models/space")
    async def model_space(inst: InstanceDep) -> dict[str, Any]:
        return _cache(inst).space(mock.clock())

    # inference (what vLLM answers behind the real proxy) ------------------------------------

    @api.post("/v1/chat/completions")
    async def chat_completions(inst: InstanceDep, body: ChatRequest) -> Response:
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

        async def events() -> AsyncIterator[bytes]:
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

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    @api.get("/v1/models")
    async def models(inst: InstanceDep) -> dict[str, Any]:
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

    @api.post("/tokenize")
    async def tokenize_route(inst: InstanceDep, body: TokenizeRequest) -> dict[str, Any]:
        inst.machine.require_model()
        return tokenize(body.prompt, settings.max_model_len)

    # control API ----------------------------------------------------------------------------

    @api.get("/mock/instances")
    async def instances() -> dict[str, Any]:
        return {"instances": [i.describe() for i in mock.instances.values()]}

    @api.get("/mock/requests")
    async def requests(
        version: str = "",
        node: str = "",
        route: str = "",
        method: str = "",
        since: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        found = mock.log.query(version=version, node=node, route=route, method=method, since=since)
        return {"requests": [r.to_json() for r in found]}

    @api.delete("/mock/requests")
    async def clear_requests() -> dict[str, str]:
        mock.log.clear()
        return ok

    @api.get("/mock/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": mock.faults.describe()}

    @api.post("/mock/faults")
    async def add_fault(rule: FaultRule) -> dict[str, Any]:
        return {"id": mock.faults.add(rule)}

    @api.delete("/mock/faults")
    async def clear_faults() -> dict[str, str]:
        mock.faults.clear()
        return ok

    @api.post("/mock/exit")
    async def exit_process(body: ExitRequest | None = None) -> dict[str, Any]:
        code = body.code if body else 1
        log.warning("exiting on request", extra={"code": code})
        asyncio.get_running_loop().call_later(0.05, os._exit, code)  # after the answer is flushed
        return {"status": "exiting", "code": code}

    return PrefixDispatch(api, mock)
