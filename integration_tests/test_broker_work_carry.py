"""The node's work carried to the new version, against real processes.

The API node drives its MLNode through the broker's node endpoint (`/{version}/nodes/{id}/...`,
with the Go client's headers and no Content-Type, as the real one sends); the chain is played by
publishing what the chain-watcher would. Between the broker and nginx, on the nodes' PoC port,
a recording hop (`BodyTap`) keeps every management call's body, so a test can see exactly what
each version was asked to do; the mocks' own request logs show what they answered.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    MODEL,
    NEW,
    OLD,
    BrokerProcess,
    MLNodeStack,
    RegistryProcess,
    broker_refreshed,
    chain_start,
    chain_switch,
)
from integration_tests.support import eventually
from shared.bus import Bus

_REAL = json.loads((Path(__file__).parent / "real_clients" / "mlnode_requests.json").read_text())
_CALLS = {call["name"]: call for call in _REAL["calls"]}
INIT_GENERATE: dict[str, Any] = _CALLS["InitGenerate"]["body"]
INIT_VALIDATE: dict[str, Any] = _CALLS["InitValidate"]["body"]
GO_HEADERS: dict[str, str] = _REAL["go_headers"]["sent"]  # no Content-Type on a POST

# The API node's own choice of model, different in every field from the node config's.
API_UP = {"model": "Qwen/QwQ-32B", "dtype": "bfloat16", "additional_args": ["--max-model-len", "8192"]}
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


# --- a recording hop on the PoC port ---------------------------------------------------------------

_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}
)


@dataclass(frozen=True)
class TapCall:
    started: float  # time.time(), as the mocks stamp their request log
    ended: float
    method: str
    version: str
    node: str
    route: str
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class BodyTap:
    """A plain HTTP hop in front of nginx that keeps every call (and its body) the broker sends."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._calls: list[TapCall] = []
        self._lock = threading.Lock()
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                started = time.time()
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                with httpx.Client(timeout=60) as client:
                    resp = client.request(
                        self.command, tap.upstream + self.path, content=body, headers=headers
                    )
                tap._add(self.command, self.path, body, resp.status_code, started)
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in _HOP | {"content-encoding", "date", "server"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="body-tap", daemon=True)
        self._thread.start()

    def _add(self, method: str, path: str, body: bytes, status: int, started: float) -> None:
        parts = path.split("?")[0].split("/")  # /{version}/{node}/api/v1/...
        version, node, route = parts[1], parts[2], "/" + "/".join(parts[3:])
        with self._lock:
            self._calls.append(TapCall(started, time.time(), method, version, node, route, body, status))

    def calls(self, version: str, route: str, node: str = "node-0", method: str = "POST") -> list[TapCall]:
        with self._lock:
            return [
                c
                for c in self._calls
                if (c.version, c.route, c.node, c.method) == (version, route, node, method)
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the stack ---------------------------------------------------------------------------------------


@dataclass
class Rig:
    stack: MLNodeStack
    tap: BodyTap
    registry: RegistryProcess
    broker: BrokerProcess
    nodes_file: Path
    nats_url: str
    logs: Path
    broker_env: dict[str, str] = field(default_factory=dict)

    def start_broker(self) -> BrokerProcess:
        self.broker = BrokerProcess(self.nats_url, self.logs, self.nodes_file, **self.broker_env)
        self.broker.start()
        return self.broker

    def node(self, node_id: str = "node-0") -> dict[str, Any]:
        (found,) = [n for n in self.broker.status()["nodes"] if n["id"] == node_id]
        return dict(found)

    def phase(self, node_id: str = "node-0") -> str:
        return str(self.node(node_id)["phase"])

    def mock_posts(self, version: str, route: str, node: str = "node-0") -> list[dict[str, Any]]:
        return self.stack.requests(version, route=route, method="POST", node=node)

    def instance(self, version: str, node: str = "node-0") -> dict[str, Any]:
        return self.stack.instances(version)[node]

    async def api(
        self, route: str, body: dict[str, Any] | None = None, *, node: str = "node-0", version: str = OLD
    ) -> httpx.Response:
        """What the API node's Go client sends: POST, its version before the segment, no Content-Type."""
        content = b"" if body is None else json.dumps(body).encode()
        async with httpx.AsyncClient(base_url=self.broker.url, timeout=60) as client:
            return await client.post(f"/{version}/nodes/{node}{route}", content=content, headers=GO_HEADERS)

    async def api_ok(self, route: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        resp = await self.api(route, body, **kw)
        assert resp.status_code == 200, (route, resp.status_code, resp.text)
        return resp


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    nats: EmbeddedNats,
    bus: Bus,
    *,
    nodes: int = 1,
    extra: dict[str, tuple[str, ...]] | None = None,
    **broker_env: str,
) -> AsyncIterator[Rig]:
    """Mocks of OLD and NEW behind nginx (the tap on the PoC port), the registry, the broker; ready on OLD."""
    with contextlib.ExitStack() as cleanup:
        stack = MLNodeStack(tmp_path, nodes=nodes, extra=extra)
        cleanup.callback(stack.stop)
        tap = BodyTap(f"http://127.0.0.1:{stack.port}")
        cleanup.callback(tap.close)
        configs = stack.node_configs()
        for config in configs:
            config["poc_port"] = tap.port
        nodes_file = tmp_path / "node-config.json"
        nodes_file.write_text(json.dumps(configs))
        logs = tmp_path / "logs"
        registry = RegistryProcess(nats.url, logs)
        registry.start()
        cleanup.callback(registry.stop)
        broker = BrokerProcess(nats.url, logs, nodes_file, **broker_env)
        broker.start()
        r = Rig(stack, tap, registry, broker, nodes_file, nats.url, logs, broker_env)
        cleanup.callback(lambda: r.broker.stop())  # the one running at the end (a test may restart it)
        await chain_start(bus, OLD)
        await eventually(lambda: r.broker.all_ready_on(OLD), timeout=20, message=f"every node ready on {OLD}")
        yield r


async def switch_outcomes(bus: Bus, height: int = 20) -> dict[str, dict[str, Any]]:
    """Switch to NEW and wait for its `broker.refreshed`: the node outcomes by node."""
    await chain_switch(bus, height=height, version=NEW)
    return await refreshed_outcomes(bus)


async def refreshed_outcomes(bus: Bus) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    async def published() -> bool:
        events = [r for r in await broker_refreshed(bus) if r["version"] == NEW]
        if events:
            found.update({n["node_id"]: n for n in events[-1]["nodes"]})
        return bool(events)

    await eventually(published, timeout=30, message=f"broker.refreshed for {NEW}")
    return found


def never_overlap(calls: list[TapCall]) -> bool:
    spans = sorted((c.started, c.ended) for c in calls)
    return all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


# --- 1-4. one switch, every kind of work ---------------------------------------------------------------


async def assert_pow_carried(
    r: Rig,
    outcome: dict[str, Any],
    *,
    route: str,
    body: dict[str, Any],
    pow_status: str,
    work: str,
    node: str = "node-0",
) -> None:
    """NEW was re-initialised with the API node's own body in the same phase; nothing else started."""
    assert (outcome["outcome"], outcome["work"], outcome["carried"]) == ("ready", work, True), outcome
    new, old = r.instance(NEW, node), r.instance(OLD, node)
    assert (new["state"], new["pow"], new["gpu_held"]) == ("POW", pow_status, True), node
    assert (old["state"], old["pow"], old["gpu_held"]) == ("STOPPED", "NOT_LOADED", False), node
    (reinit,) = r.tap.calls(NEW, route, node)
    assert reinit.status == 200
    assert reinit.json() == body  # the callback url is the API node's own, unversioned
    assert reinit.json()["url"] == "http://api-private:9100/v1/poc-batches"
    assert new["pow_params"] == body  # and what NEW keeps
    assert [p["status"] for p in r.mock_posts(NEW, route, node)] == [200]
    assert r.mock_posts(NEW, "/api/v1/inference/up", node) == []  # no model the API node did not ask for
    assert r.mock_posts(NEW, "/api/v1/stop", node) == []
    # OLD got the API node's stop (before its init) and the handoff's, which came before NEW's init:
    # the GPU was free for it.
    _api_stop, old_stop = r.mock_posts(OLD, "/api/v1/stop", node)
    assert old_stop["status"] == 200 and old_stop["ts"] <= reinit.started
    shown = r.node(node)
    assert (shown["phase"], shown["ready"], shown["version"]) == ("pow", False, NEW)


async def _phase_validate_on_the_mlnode(r: Rig, node: str) -> None:
    """The validate phase set on the old version without the broker seeing it (read back at the switch)."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(
            f"http://127.0.0.1:{r.stack.port}/{OLD}/{node}/api/v1/pow/phase/validate", headers=GO_HEADERS
        )
    assert resp.status_code == 200, resp.text


async def test_one_switch_carries_every_kind_of_work_to_the_new_version(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """A fleet in the middle of an epoch: serving the API node's model, in each PoC phase, stopped."""
    async with rig(tmp_path, nats_server, bus, nodes=7, BROKER_RECONCILE_INTERVAL_S="1") as r:
        # node-0 serves the API node's own model (not the node config's).
        assert (await r.api_ok("/api/v1/stop", node="node-0")).headers["x-broker-version"] == OLD
        assert (await r.api_ok("/api/v1/inference/up", API_UP, node="node-0")).headers[
            "x-broker-version"
        ] == OLD
        assert r.instance(OLD, "node-0")["model"] == API_UP["model"]
        # node-1 generates; node-2 validates; node-3 and node-4 moved from generate to validate,
        # through the broker and behind its back; node-5 was stopped; node-6 was never touched.
        for node, init, body in (
            ("node-1", "/api/v1/pow/init/generate", INIT_GENERATE),
            ("node-2", "/api/v1/pow/init/validate", INIT_VALIDATE),
            ("node-3", "/api/v1/pow/init/generate", INIT_GENERATE),
            ("node-4", "/api/v1/pow/init/generate", INIT_GENERATE),
        ):
            await r.api_ok("/api/v1/stop", node=node)
            await r.api_ok(init, body, node=node)
        await r.api_ok("/api/v1/pow/phase/validate", node="node-3")
        await _phase_validate_on_the_mlnode(r, "node-4")
        await r.api_ok("/api/v1/stop", node="node-5")
        phases = {"node-0": "ready", "node-1": "pow", "node-2": "pow", "node-5": "stopped"}
        await eventually(lambda: all(r.phase(n) == p for n, p in phases.items()), message=f"phases {phases}")

        outcomes = await switch_outcomes(bus)

        # 1. inference: NEW serves exactly what the API node asked for: model, dtype, args.
        out = outcomes["node-0"]
        assert (out["outcome"], out["work"], out["carried"]) == ("ready", "inference", True)
        new, old = r.instance(NEW, "node-0"), r.instance(OLD, "node-0")
        assert (new["state"], new["model"], new["inference"]) == ("INFERENCE", API_UP["model"], "completed")
        assert (old["state"], old["gpu_held"]) == ("STOPPED", False)
        (carried,) = r.tap.calls(NEW, "/api/v1/inference/up", "node-0")
        assert carried.json() == API_UP and carried.status == 200
        # 2, 3. proof of compute, each in its own phase with the round's parameters.
        await assert_pow_carried(
            r,
            outcomes["node-1"],
            route="/api/v1/pow/init/generate",
            body=INIT_GENERATE,
            pow_status="GENERATING",
            work="pow_generate",
            node="node-1",
        )
        for node, body in (("node-2", INIT_VALIDATE), ("node-3", INIT_GENERATE), ("node-4", INIT_GENERATE)):
            await assert_pow_carried(
                r,
                outcomes[node],
                route="/api/v1/pow/init/validate",  # validating is initialised as such
                body=body,
                pow_status="VALIDATING",
                work="pow_validate",
                node=node,
            )
        # 4. stopped stays stopped; the untouched node serves the node config's model.
        assert (outcomes["node-5"]["work"], outcomes["node-5"]["carried"]) == ("stopped", True)
        assert outcomes["node-5"]["outcome"] == "ready"
        assert (outcomes["node-6"]["work"], outcomes["node-6"]["carried"]) == ("inference", True)
        assert r.instance(NEW, "node-6")["model"] == MODEL

        async with httpx.AsyncClient(base_url=r.broker.url, timeout=10) as client:
            chat = await client.post("/nodes/node-0/v1/chat/completions", json=CHAT)
            status = await client.get(f"/{NEW}/nodes/node-1/api/v1/pow/status", headers=GO_HEADERS)
            pow_chat = await client.post("/nodes/node-1/v1/chat/completions", json=CHAT)
        assert chat.status_code == 200 and chat.headers["x-mlnode-version"] == NEW
        assert chat.json()["model"] == API_UP["model"]
        assert status.json()["status"] == "GENERATING" and status.headers["x-broker-version"] == NEW
        # Inference does not wait for a node in PoC: it reaches NEW, which has no model to answer with.
        assert pow_chat.status_code == 503 and pow_chat.headers["x-broker-version"] == NEW, pow_chat.text

        # Every reconcile round's heal re-checks node-6 on NEW (GET state): after three of them,
        # nothing was brought up on the stopped node or the PoC nodes.
        def rechecks() -> int:
            return len(r.stack.requests(NEW, route="/api/v1/state", method="GET", node="node-6"))

        checks = rechecks()
        await eventually(
            lambda: rechecks() >= checks + 3, timeout=12, message="three reconcile rounds after the switch"
        )
        for node in ("node-1", "node-2", "node-3", "node-4", "node-5"):
            assert r.mock_posts(NEW, "/api/v1/inference/up", node) == [], node  # neither handoff nor heal
        assert [u["status"] for u in r.mock_posts(NEW, "/api/v1/inference/up", "node-6")] == [200]
        assert (
            r.instance(NEW, "node-5")["state"] == "STOPPED"
            and r.instance(OLD, "node-5")["state"] == "STOPPED"
        )
        assert r.instance(NEW, "node-5")["gpu_held"] is False
        shown = r.node("node-5")
        assert (shown["phase"], shown["ready"], shown["version"]) == ("stopped", False, NEW)


# --- 5, 6. the API node's call in the middle of a handoff ----------------------------------------------

# Two windows, named by the handoff phase the node is in: still stopping OLD (its stop is held
# 2 s by a fault rule), or loading NEW (2 s). The value: the mocks' extra arguments.
WINDOWS: dict[str, dict[str, tuple[str, ...]] | None] = {
    "stop": None,
    "bring_up": {NEW: ("--model-load-s", "2")},
}


async def _in_window(r: Rig, bus: Bus, window: str) -> float:
    """Switch and return (time.time()) once node-0's handoff is in `window`."""
    if window == "stop":
        r.stack.fault(OLD, action="delay", route="/api/v1/stop", method="POST", latency_s=2.0, times=1)
    await chain_switch(bus, height=20, version=NEW)
    await eventually(
        lambda: r.phase() == window, timeout=15, interval=0.01, message=f"handoff phase {window}"
    )
    return time.time()


@pytest.mark.parametrize("window", list(WINDOWS))
async def test_api_nodes_stop_and_inference_up_mid_handoff_never_run_between_its_stop_and_bring_up(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path, window: str
) -> None:
    """The real API node's way to load its model: stop, then inference/up, here sent mid-handoff."""
    async with rig(tmp_path, nats_server, bus, extra=WINDOWS[window]) as r:
        sent = await _in_window(r, bus, window)
        stop = await r.api("/api/v1/stop")

        assert stop.status_code == 200 and stop.headers["x-broker-version"] == NEW, stop.text
        outcome = (await refreshed_outcomes(bus))["node-0"]
        (old_stop,) = r.mock_posts(OLD, "/api/v1/stop")  # the handoff's
        (api_stop,) = r.mock_posts(NEW, "/api/v1/stop")  # the API node's: the handoff never stops NEW
        ups = r.mock_posts(NEW, "/api/v1/inference/up")
        if window == "stop":
            # It waited for the handoff, which left the work to it: NEW was never brought up.
            assert ups == []
            assert old_stop["ts"] <= api_stop["ts"]
            assert (outcome["outcome"], outcome["work"], outcome["carried"]) == ("ready", "stopped", False)
            assert "/api/v1/stop" in outcome["detail"], outcome
        else:
            # Sent while NEW was loading, run once the load had completed: never in between.
            assert [u["status"] for u in ups] == [200]  # the load was not cut short by the stop
            assert sent < ups[0]["ts"] < api_stop["ts"]
            assert old_stop["ts"] < ups[0]["ts"]
            assert (outcome["outcome"], outcome["work"], outcome["carried"]) == ("ready", "inference", True)
        assert r.instance(NEW)["state"] == "STOPPED" and r.instance(OLD)["state"] == "STOPPED"
        await eventually(lambda: r.phase() == "stopped", message="node-0 shows stopped")
        assert (r.node()["ready"], r.node()["version"]) == (False, NEW)

        up = await r.api("/api/v1/inference/up", API_UP)

        assert up.status_code == 200 and up.headers["x-broker-version"] == NEW, up.text
        assert [q for q in r.stack.requests(NEW) if q["status"] == 409] == []
        loads = r.tap.calls(NEW, "/api/v1/inference/up")
        assert never_overlap(loads), loads
        expected = [API_UP["model"]] if window == "stop" else [MODEL, API_UP["model"]]
        assert [c.json()["model"] for c in loads] == expected and loads[-1].json() == API_UP
        assert [c.status for c in loads] == [200] * len(expected)
        (tapped_stop,) = r.tap.calls(NEW, "/api/v1/stop")
        if window == "bring_up":
            assert loads[0].ended <= tapped_stop.started  # it waited for the handoff's load to finish
        assert tapped_stop.ended <= loads[-1].started  # and the API node's own load came after it
        new = r.instance(NEW)
        assert (new["state"], new["model"], new["inference"]) == ("INFERENCE", API_UP["model"], "completed")
        await eventually(lambda: r.broker.all_ready_on(NEW), message=f"ready on {NEW}")
        assert r.phase() == "ready"


# --- 7. the work survives a broker restart -------------------------------------------------------------


async def test_pow_generate_recorded_before_a_broker_restart_is_still_carried(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with rig(tmp_path, nats_server, bus) as r:
        await r.api_ok("/api/v1/stop")
        await r.api_ok("/api/v1/pow/init/generate", INIT_GENERATE)
        r.broker.kill()  # SIGKILL: nothing flushed at shutdown; the work must already be in the KV
        r.start_broker()
        await eventually(lambda: r.phase() == "pow", timeout=15, message="the restarted broker shows pow")
        assert (r.instance(OLD)["state"], r.instance(OLD)["pow"]) == ("POW", "GENERATING")
        assert [u["status"] for u in r.mock_posts(OLD, "/api/v1/inference/up")] == [200]  # the first only

        outcome = (await switch_outcomes(bus))["node-0"]

        await assert_pow_carried(
            r,
            outcome,
            route="/api/v1/pow/init/generate",
            body=INIT_GENERATE,
            pow_status="GENERATING",
            work="pow_generate",
        )
