"""`python -m bench.baselines.original_broker`: a broker that switches versions the original way.

It reproduces what the original API node does around a version switch (gonka-facts sections
4.2-4.4 and 4.7), so the zero-downtime benchmark can run it next to ours on the same stack:

- The current version changes the moment the chain says so (4.2): here on `version.changed`.
- A periodic reconciler tick (4.3; real period 30 s, here `BASELINE_REFRESH_TICK_S`, default 2 s)
  refreshes the clients when current != last used, then sets last used = current whatever
  happened.
- The refresh (4.4, `RefreshClientImmediate`) swaps each node's client to the current version at
  once and sends `stop` to the old version from a separate task with a 10 s timeout: the answer
  is not checked (any answer is success, §3), a failure is only logged, nothing is retried.
- The node status worker (4.7; real period 60 s, here `BASELINE_STATUS_TICK_S`, default 2 s)
  reads each node's state through its current client; a failed read leaves the status as it
  was; INFERENCE with a failing health check becomes FAILED. The reconcile after it sends
  stop + `inference/up` (which blocks while the model loads) to every node not in INFERENCE.
- Requests go to a node whose status is INFERENCE (least in flight), through its current client,
  with no wait and no retry: what the MLNode answers is the answer, so between the refresh and
  the end of the model load requests reach a version that cannot serve them and fail.

One deliberate difference: clients are built with the registry's current version at start-up,
not with the empty version a fresh original install starts from (which stops the unversioned
default route on its first tick); the benchmarks start from a settled stack, as the original
would be after its first minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nats.aio.msg import Msg

from shared.http_serving import HttpServer
from shared.logging import configure_logging, get_logger
from shared.service_main import until_signalled

__all__ = ["BaselineSettings", "OriginalBroker", "main"]

log = get_logger("baseline")

INFERENCE = "INFERENCE"
STOP_TIMEOUT_S = 10.0  # RefreshClientImmediate's context
CLIENT_TIMEOUT_S = 900.0  # the original client's 15 min
_PASS_HEADERS = ("content-type", "x-mlnode-version", "x-mlnode-node")


@dataclass(frozen=True)
class BaselineSettings:
    port: int
    nodes_file: Path
    nats_url: str
    registry_url: str
    refresh_tick_s: float = 2.0
    status_tick_s: float = 2.0

    @classmethod
    def from_env(cls) -> BaselineSettings:
        env = os.environ
        return cls(
            port=int(env["BASELINE_PORT"]),
            nodes_file=Path(env["BASELINE_NODES_FILE"]),
            nats_url=env["BASELINE_NATS_URL"],
            registry_url=env["BASELINE_REGISTRY_URL"].rstrip("/"),
            refresh_tick_s=float(env.get("BASELINE_REFRESH_TICK_S", "2.0")),
            status_tick_s=float(env.get("BASELINE_STATUS_TICK_S", "2.0")),
        )


@dataclass
class Node:
    id: str
    host: str
    port: int
    segment: str
    model: str
    args: list[str]
    version: str = ""  # the version the node's client was built for
    status: str = "UNKNOWN"
    in_flight: int = 0
    commanding: bool = False  # a reconcile command (stop + inference/up) is running

    def url(self, version: str | None = None) -> str:
        v = self.version if version is None else version
        return f"http://{self.host}:{self.port}{'/' + v if v else ''}{self.segment}"

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> Node:
        model, spec = next(iter(raw["models"].items()))
        return cls(
            id=raw["id"],
            host=raw["host"],
            port=int(raw["inference_port"]),
            segment=raw.get("inference_segment", ""),
            model=model,
            args=list(spec.get("args", [])),
        )


class OriginalBroker:
    def __init__(self, settings: BaselineSettings) -> None:
        self.settings = settings
        self.nodes = [Node.from_config(n) for n in json.loads(settings.nodes_file.read_text())]
        self.current = ""
        self.last_used = ""
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(CLIENT_TIMEOUT_S, connect=5.0),
            limits=httpx.Limits(max_connections=4000, max_keepalive_connections=1000),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.stops_sent = 0

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        while not self.current:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                state = (await self.http.get(f"{self.settings.registry_url}/state", timeout=2)).json()
                self.current = state["current_version"] or ""
            if not self.current:
                await asyncio.sleep(0.2)  # the registry has not synced with the chain yet
        self.last_used = self.current
        for node in self.nodes:
            node.version = self.current
        nc = await nats.connect(self.settings.nats_url, name="baseline-broker", max_reconnect_attempts=-1)
        await nc.subscribe("version.changed", cb=self._on_version_changed)
        self._spawn(self._every(self.settings.refresh_tick_s, self.refresh_tick))
        self._spawn(self._every(self.settings.status_tick_s, self.status_tick))
        log.info("baseline broker running", extra={"version": self.current, "nodes": len(self.nodes)})

    async def _on_version_changed(self, msg: Msg) -> None:
        """SetCurrentNodeVersion: memory only; nothing else happens until the next tick."""
        body = json.loads(msg.data)
        self.current = str(body["current"])
        log.info("current version set", extra={"version": self.current})

    @staticmethod
    async def _every(interval_s: float, work: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except Exception:
                log.exception("tick failed")

    # -- 4.3 / 4.4: the refresh tick --------------------------------------------------------------

    async def refresh_tick(self) -> None:
        if not self.current or self.current == self.last_used:
            return
        for node in self.nodes:
            old, node.version = node.version, self.current  # routed to the new version from now on
            if old and old != self.current:
                self._spawn(self._fire_and_forget_stop(node, old))
        log.info("clients refreshed", extra={"version": self.current, "previous": self.last_used})
        self.last_used = self.current  # whatever the stops do

    async def _fire_and_forget_stop(self, node: Node, version: str) -> None:
        self.stops_sent += 1
        try:
            await self.http.post(f"{node.url(version)}/api/v1/stop", timeout=STOP_TIMEOUT_S)
        except httpx.HTTPError as exc:
            log.warning("stop failed", extra={"node": node.id, "version": version, "error": repr(exc)})
            return
        log.info("stop sent", extra={"node": node.id, "version": version})  # any answer is success

    # -- 4.7: the status worker and the reconcile after it ------------------------------------------

    async def status_tick(self) -> None:
        await asyncio.gather(*(self._query_status(n) for n in self.nodes))
        for node in self.nodes:
            if node.status != INFERENCE and not node.commanding:
                self._spawn(self._inference_up(node))

    async def _query_status(self, node: Node) -> None:
        try:
            resp = await self.http.get(f"{node.url()}/api/v1/state", timeout=5)
            if resp.status_code != 200:
                return  # an error: the status is left as it was
            state = str(resp.json()["state"])
        except (httpx.HTTPError, ValueError, KeyError):
            return
        if state == INFERENCE:
            try:
                healthy = (await self.http.get(f"{node.url()}/health", timeout=5)).status_code == 200
            except httpx.HTTPError:
                healthy = False
            state = INFERENCE if healthy else "FAILED"
        if state != node.status:
            log.info("node status", extra={"node": node.id, "status": state, "version": node.version})
        node.status = state

    async def _inference_up(self, node: Node) -> None:
        """InferenceUpNodeCommand: stop, then inference/up; any answer counts as success (§3)."""
        node.commanding = True
        version = node.version
        try:
            await self.http.post(f"{node.url(version)}/api/v1/stop")
            body = {"model": node.model, "dtype": "float16", "additional_args": node.args}
            await self.http.post(f"{node.url(version)}/api/v1/inference/up", json=body)
        except httpx.HTTPError as exc:
            node.status = "FAILED"
            log.warning("inference up failed", extra={"node": node.id, "error": repr(exc)})
        else:
            node.status = INFERENCE
            log.info("inference up", extra={"node": node.id, "version": version})
        finally:
            node.commanding = False

    # -- forwarding ----------------------------------------------------------------------------------

    async def forward(self, path: str, body: bytes) -> Response:
        candidates = [n for n in self.nodes if n.status == INFERENCE]
        if not candidates:
            return JSONResponse({"error": "no nodes available"}, status_code=503)
        node = min(candidates, key=lambda n: (n.in_flight, n.id))
        node.in_flight += 1
        try:
            resp = await self.http.post(
                f"{node.url()}{path}", content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"{node.id}: {type(exc).__name__}"}, status_code=500)
        finally:
            node.in_flight -= 1
        headers = {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}
        return Response(content=resp.content, status_code=resp.status_code, headers=headers)

    def app(self) -> FastAPI:
        app = FastAPI(
            title="baseline broker (original behaviour)",
            docs_url=None,
            redoc_url=None,
            strict_content_type=False,
        )

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self.forward("/v1/chat/completions", await request.body())

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/status")
        async def status() -> dict[str, Any]:
            return {
                "current_version": self.current,
                "last_used_version": self.last_used,
                "stops_sent": self.stops_sent,
                "nodes": [
                    {"id": n.id, "version": n.version, "status": n.status, "ready": n.status == INFERENCE}
                    for n in self.nodes
                ],
            }

        return app


async def _serve(settings: BaselineSettings) -> None:
    broker = OriginalBroker(settings)
    await broker.start()
    async with HttpServer(broker.app(), "127.0.0.1", settings.port):
        await asyncio.Event().wait()  # until SIGTERM/SIGINT cancels it


def main() -> int:
    configure_logging("baseline-broker", "INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = BaselineSettings.from_env()
    except (KeyError, ValueError) as exc:
        print(f"baseline broker: bad settings: {exc!r}", file=sys.stderr)
        return 2
    asyncio.run(until_signalled(_serve(settings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
