"""The node endpoint against real processes: mock MLNodes behind nginx, the registry, the broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    MODEL,
    NEW,
    OLD,
    MLNodeStack,
    chain_switch,
    serving_on,
)
from integration_tests.support import eventually
from shared.bus import Bus
from shared.events import BlockCommitted, UpgradeScheduled
from shared.versions import MLNodeVersion

CHAT = {"messages": [{"role": "user", "content": "hello"}], "logprobs": True, "top_logprobs": 5}


# --- every route, before, during and after a switch ---------------------------------------------------

STATUS_BODY = {"hf_repo": MODEL, "hf_commit": None}
STREAM = {**CHAT, "model": MODEL, "stream": True, "stream_options": {"include_usage": True}}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None = None
    check: Callable[[Any], bool] = lambda answer: isinstance(answer, dict)
    stream: bool = False
    status: int | None = None  # None: any 2xx

    def answered(self, status: int) -> bool:
        return status == self.status if self.status is not None else 200 <= status < 300

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}{' (stream)' if self.stream else ''}"


ROUTES = (
    Route("GET", "/api/v1/state", check=lambda a: a == {"state": "INFERENCE"}),
    # PoC and training refuse while a model is served, as on the real MLNode: the 409 passes through.
    Route("GET", "/api/v1/pow/status", check=lambda a: "INFERENCE is running" in a["detail"], status=409),
    Route("GET", "/api/v1/gpu/devices", check=lambda a: a["count"] == len(a["devices"]) >= 1),
    Route("GET", "/api/v1/gpu/driver", check=lambda a: isinstance(a.get("driver_version"), str)),
    Route("GET", "/api/v1/models/list", check=lambda a: isinstance(a.get("models"), list)),
    Route("GET", "/api/v1/models/space", check=lambda a: isinstance(a.get("cache_path"), str)),
    Route("POST", "/api/v1/models/status", STATUS_BODY, check=lambda a: a["model"]["hf_repo"] == MODEL),
    Route("GET", "/api/v1/inference/up/status", check=lambda a: isinstance(a.get("status"), str)),
    Route("GET", "/api/v1/train/status", check=lambda a: "INFERENCE is running" in a["detail"], status=409),
    Route("GET", "/health"),
    Route("GET", "/v1/models", check=lambda a: [m["id"] for m in a["data"]] == [MODEL]),
    Route(
        "POST",
        "/tokenize",
        {"model": MODEL, "prompt": "how many tokens are here"},
        check=lambda a: a["count"] > 0,
    ),
    Route("POST", "/v1/chat/completions", {**CHAT, "model": MODEL}, check=lambda a: bool(a["choices"])),
    Route("POST", "/v1/chat/completions", STREAM, stream=True),
)
# Routes the broker itself calls on a version (state, health, serving probe): the mock's log
# cannot tell the API node's calls to them from the broker's, so only the answers are checked.
BROKER_ALSO_CALLS = frozenset({"/api/v1/state", "/health", "/v1/models"})


@dataclass
class Answer:
    route: Route
    status: int | None = None
    broker_version: str | None = None
    mlnode_version: str | None = None
    problem: str = ""

    @property
    def version(self) -> str | None:
        return self.mlnode_version if self.mlnode_version == self.broker_version else None


def complete_stream(body: bytes) -> bool:
    """Server-sent events to the end: content, the usage chunk, then [DONE]."""
    events = [e[len(b"data: ") :] for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    if len(events) < 3 or events[-1] != b"[DONE]":
        return False
    last = json.loads(events[-2])
    return bool(last["choices"] == [] and last["usage"]["completion_tokens"] > 0)


async def ask(node: httpx.AsyncClient, route: Route) -> Answer:
    """One call through the endpoint, read to its last byte; any failure is written down, not raised."""
    answer = Answer(route)
    try:
        async with node.stream(route.method, route.path, json=route.body) as reply:
            body = await reply.aread()
    except httpx.HTTPError as exc:
        answer.problem = f"{type(exc).__name__}: {exc}"
        return answer
    answer.status = reply.status_code
    answer.broker_version = reply.headers.get("x-broker-version")
    answer.mlnode_version = reply.headers.get("x-mlnode-version")
    if not route.answered(reply.status_code):
        answer.problem = f"answered {reply.status_code}: {body[:300]!r}"
    elif answer.version is None:
        answer.problem = f"broker says {answer.broker_version}, MLNode says {answer.mlnode_version}"
    else:
        try:
            good = complete_stream(body) if route.stream else route.check(json.loads(body or b"null"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            good, body = False, body + f" ({type(exc).__name__}: {exc})".encode()
        if not good:
            answer.problem = f"unexpected answer: {body[:300]!r}"
    return answer


def last_seq(stack: MLNodeStack, version: str) -> int:
    return max((r["seq"] for r in stack.requests(version)), default=0)


def since(stack: MLNodeStack, version: str, mark: int, **match: str) -> list[dict[str, Any]]:
    return [r for r in stack.requests(version, node="node-0", **match) if r["seq"] > mark]


async def every_route_answered_by(stack: MLNodeStack, node: httpx.AsyncClient, version: str) -> None:
    """Each route in turn: 2xx from `version`, and the call is in that version's request log."""
    other = NEW if version == OLD else OLD
    other_mark = last_seq(stack, other)
    for route in ROUTES:
        mark = last_seq(stack, version)
        answer = await ask(node, route)
        assert not answer.problem and answer.version == version, f"{route.name}: {answer}"

        def arrived(route: Route = route, mark: int = mark) -> bool:
            found = since(stack, version, mark, route=route.path, method=route.method)
            return any(route.answered(r["status"] or 0) for r in found)

        await eventually(arrived, timeout=5, message=f"{route.name} in {version}'s request log")
    strays = [r for r in since(stack, other, other_mark) if r["route"] not in BROKER_ALSO_CALLS]
    assert not strays, f"calls reached {other} while {version} was current: {strays}"


async def test_every_route_is_answered_by_the_current_version_before_during_and_after_a_switch(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    # NEW's load makes the switch last long enough to send calls in the middle of it; OLD's slower
    # stream (~0.7 s) is still under way when the broker, a few ms after the switch, stops OLD.
    old_args = ("--model-load-s", "0.2", "--stream-chunk-delay-s", "0.1")
    async with (
        serving_on(bus, nats_server.url, tmp_path, nodes=1, model_load_s=2, extra={OLD: old_args}) as (
            stack,
            _registry,
            broker,
        ),
        httpx.AsyncClient(base_url=f"{broker.url}/nodes/node-0", timeout=30) as node,
        httpx.AsyncClient(base_url=broker.url, timeout=5) as http,
    ):
        # Before: every route answered by OLD.
        await every_route_answered_by(stack, node, OLD)

        # During: a batch under way as the switch is published, one fired right after it, one
        # once the broker is bringing NEW up.
        old_mark, new_mark = last_seq(stack, OLD), last_seq(stack, NEW)
        first = [asyncio.create_task(ask(node, route)) for route in ROUTES]
        await chain_switch(bus, height=20, version=NEW)
        first += [asyncio.create_task(ask(node, route)) for route in ROUTES]

        async def handing_over() -> bool:
            status = (await http.get("/upgrade/status")).json()
            return bool(status["current_version"] == NEW and not status["nodes"][0]["ready"])

        await eventually(handing_over, timeout=10, message="the broker handing node-0 over")
        second = [asyncio.create_task(ask(node, route)) for route in ROUTES]
        answers = await asyncio.gather(*first, *second)
        failed = [f"{a.route.name}: {a.problem or a.version}" for a in answers if a.problem or not a.version]
        assert not failed, f"calls that failed during the switch: {failed}"
        late = [a.route.name for a in answers[len(first) :] if a.version != NEW]
        assert not late, f"sent while {NEW} was being brought up, answered by {OLD}: {late}"
        await eventually(lambda: broker.all_ready_on(NEW), timeout=20, message=f"ready on {NEW}")

        # The mocks' logs agree: OLD took calls only before its stop, NEW only once it served.
        stops = since(stack, OLD, old_mark, route="/api/v1/stop", method="POST")
        assert [s["status"] for s in stops] == [200], stops
        on_old = [
            r for r in since(stack, OLD, old_mark) if r["route"] not in BROKER_ALSO_CALLS | {"/api/v1/stop"}
        ]
        after_stop = [r for r in on_old if r["seq"] > stops[0]["seq"]]
        assert not after_stop, f"calls reached {OLD} after its stop: {after_stop}"
        ups = since(stack, NEW, new_mark, route="/api/v1/inference/up", method="POST")
        assert [u["status"] for u in ups] == [200], ups
        on_new = [
            r
            for r in since(stack, NEW, new_mark)
            if r["route"] not in BROKER_ALSO_CALLS | {"/api/v1/inference/up"}
        ]
        early = [r for r in on_new if r["seq"] < ups[0]["seq"] or r["ts"] < stops[0]["ts"]]
        assert not early, f"calls reached {NEW} before it served: {early}"
        for version, records in ((OLD, on_old), (NEW, on_new)):
            logged = sorted((r["method"], r["route"]) for r in records)
            answered = sorted(
                (a.route.method, a.route.path)
                for a in answers
                if a.version == version and a.route.path not in BROKER_ALSO_CALLS
            )
            assert logged == answered, f"{version}: the log has {logged}, the answers say {answered}"

        # After: every route answered by NEW.
        await every_route_answered_by(stack, node, NEW)


async def test_a_stream_in_flight_on_the_old_version_when_the_switch_starts_is_drained_not_cut(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The handoff's drain waits for the endpoint's calls in flight, as it does for forwarded ones."""
    async with serving_on(
        bus, nats_server.url, tmp_path, nodes=1, extra={OLD: ("--stream-chunk-delay-s", "0.25")}
    ) as (stack, _registry, broker):  # ~2 s
        async with httpx.AsyncClient(base_url=f"{broker.url}/nodes/node-0", timeout=30) as node:
            streaming = asyncio.create_task(
                ask(node, Route("POST", "/v1/chat/completions", STREAM, stream=True))
            )
            await eventually(
                lambda: stack.instances(OLD)["node-0"]["in_flight"] == 1,
                message=f"the stream under way on {OLD}",
            )
            await chain_switch(bus, height=20, version=NEW)
            answer = await streaming
            await eventually(lambda: broker.all_ready_on(NEW), timeout=20, message=f"ready on {NEW}")
        assert not answer.problem and answer.version == OLD, answer
        [chat] = stack.requests(OLD, route="/v1/chat/completions", node="node-0")
        [stop] = stack.requests(OLD, route="/api/v1/stop", method="POST", node="node-0")
        assert chat["status"] == 200 and chat["seq"] < stop["seq"], (chat, stop)


# --- the client's version prefix around the upgrade height ----------------------------------------------

MISMATCH = "mlnode_upgrade_broker_endpoint_version_mismatch_total"
PLACEMENTS: dict[str, Callable[[str, str], str]] = {
    "before the segment": lambda version, route: f"/{version}/nodes/node-0{route}",  # the Go client's
    "after the segment": lambda version, route: f"/nodes/node-0/{version}{route}",
}


async def mismatches(http: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """(current, sent) -> count, from the broker's /metrics."""
    found = {}
    for family in text_string_to_metric_families((await http.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == MISMATCH:
                found[(sample.labels["current"], sample.labels["sent"])] = sample.value
    return found


async def answered_by(http: httpx.AsyncClient, path: str, method: str = "GET") -> str:
    body = {**CHAT, "model": MODEL} if method == "POST" else None
    reply = await http.request(method, path, json=body)
    assert reply.status_code == 200, f"{method} {path}: {reply.status_code} {reply.text[:300]}"
    assert reply.headers["x-broker-version"] == reply.headers["x-mlnode-version"], reply.headers
    return reply.headers["x-mlnode-version"]


async def test_the_clients_prefix_a_block_either_side_of_the_upgrade_height_is_overridden_and_counted(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The original API node moves its prefix a block early (or late): the registry's version answers."""
    height = 20
    async with serving_on(bus, nats_server.url, tmp_path, nodes=1) as (stack, registry, broker):
        await bus.publish(UpgradeScheduled(height=height, node_version=MLNodeVersion(NEW)))
        await bus.publish(BlockCommitted(height=height - 1))
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:

            async def plan_known() -> bool:
                readiness = (await http.get("/upgrade/readiness")).json()
                return bool(readiness["target_version"] == NEW)

            await eventually(plan_known, message=f"the broker told of the plan for {NEW} at {height}")
            await eventually(
                lambda: registry.state()["last_height"] == height - 1, message=f"the registry at {height - 1}"
            )
            state = registry.state()
            assert state["current_version"] == OLD and [p["height"] for p in state["pending"]] == [height]

            # One block before the height: OLD's prefix is right; NEW's is early and overridden.
            for where, path in PLACEMENTS.items():
                for method, route in (("GET", "/api/v1/state"), ("POST", "/v1/chat/completions")):
                    assert await answered_by(http, path(OLD, route), method) == OLD, (where, route)
                    assert await answered_by(http, path(NEW, route), method) == OLD, (where, route)
            assert await mismatches(http) == {(OLD, NEW): 4.0}
            assert not stack.requests(NEW, route="/v1/chat/completions")
            unknown = await http.get(f"/{OLD}/nodes/node-0/api/v1/nothing-here")
            assert unknown.status_code == 404  # the MLNode's own answer, passed through
            assert unknown.headers["x-broker-version"] == OLD
            missing = await http.get("/nodes/node-9/api/v1/state")
            assert missing.status_code == 404 and "no node" in missing.json()["detail"]
            outside = await http.get(f"/{OLD}/nodes/node-0/api/v1/../../upgrade/status")
            assert outside.status_code == 404  # no way out of the node's MLNode API

            await bus.publish(BlockCommitted(height=height))
            await eventually(lambda: broker.all_ready_on(NEW), timeout=20, message=f"ready on {NEW}")

            # One block after: NEW's prefix is right; OLD's is late and overridden.
            old_chats = len(stack.requests(OLD, route="/v1/chat/completions"))
            for where, path in PLACEMENTS.items():
                for method, route in (("GET", "/api/v1/state"), ("POST", "/v1/chat/completions")):
                    assert await answered_by(http, path(OLD, route), method) == NEW, (where, route)
                    assert await answered_by(http, path(NEW, route), method) == NEW, (where, route)
            assert await mismatches(http) == {(OLD, NEW): 4.0, (NEW, OLD): 4.0}
            assert len(stack.requests(OLD, route="/v1/chat/completions")) == old_chats
            assert len(stack.requests(NEW, route="/v1/chat/completions", node="node-0")) == 4
