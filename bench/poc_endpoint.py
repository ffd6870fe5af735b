"""PoC through the broker's node endpoint across a switch, driven as the API node drives it.

Before the switch, one node is put into PoC generate the way the API node does it, through the
broker's `/nodes/{id}/api/v1/stop` and `/nodes/{id}/api/v1/pow/init/generate` with a
`PowInitRequest` body. While the switch runs, PoC calls keep going through the endpoint on an
open-loop schedule, `GET pow/status` and `POST pow/validate` (a `ProofBatch` with `node_id`) in
turn, denser for a moment from the block on so that some arrive while the node is handed over
(those wait for the handoff and are answered by the new version). Which version answered is the
endpoint's `x-broker-version` header. A call fails unless answered 200 and, for `pow/status`,
GENERATING: the API node would see its node drop out of the round. After the switch
`pow/status` must say GENERATING, answered by the new version: the phase was carried.

The bodies are the real API node's (`devtools.api_node_poc`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import RawClient
from bench.logtail import LogTail
from bench.stack_calls import StackCalls
from bench.stats import send_offsets, summarize_ms
from bench.waiting import BenchError
from devtools.api_node_poc import POW_INIT_BODY, PROOF_BATCH
from services.broker.endpoint_paths import node_segment

__all__ = [
    "GENERATING",
    "STATUS",
    "VALIDATE",
    "PocCall",
    "PocDriver",
    "PocPlan",
    "handoff_window",
    "init_body_carried",
    "phase_kept",
    "poc_figures",
    "poc_schedule",
]

STOP = "/api/v1/stop"
INIT_GENERATE = "/api/v1/pow/init/generate"
STATUS = "/api/v1/pow/status"
VALIDATE = "/api/v1/pow/validate"
GENERATING = "GENERATING"
VERSION_HEADER = "x-broker-version"

_BODIES = {STATUS: b"", VALIDATE: json.dumps(PROOF_BATCH).encode()}


@dataclass(frozen=True)
class PocPlan:
    """PoC calls per second over the whole run, and `burst_per_s` for `burst_s` from the block on."""

    rate_per_s: float
    burst_per_s: float
    burst_s: float


@dataclass(frozen=True, slots=True)
class PocCall:
    """One call through the node endpoint: what answered, and (pow/status) the phase it reported."""

    route: str
    sent_wall: float
    latency_s: float
    status: int  # 0: no answer (connection error or timeout)
    version: str  # x-broker-version; "" when the broker itself refused, or nobody answered
    phase: str = ""  # pow/status: its `status`
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and (self.route != STATUS or self.phase == GENERATING)


def poc_schedule(plan: PocPlan, duration_s: float, burst_at_s: float) -> list[tuple[float, str]]:
    """(seconds from the start, route) of every PoC call: pow/status and pow/validate in turn."""
    base = send_offsets(plan.rate_per_s, duration_s)
    burst = [burst_at_s + o for o in send_offsets(plan.burst_per_s, plan.burst_s)]
    offsets = sorted({round(o, 6) for o in (*base, *burst) if 0 <= o < duration_s})
    return [(o, STATUS if i % 2 == 0 else VALIDATE) for i, o in enumerate(offsets)]


def handoff_window(lines: Iterable[dict[str, Any]], transition: str, node: str) -> tuple[float, float] | None:
    """When the broker started the switch and when it was done with `node` (its broker log lines)."""
    start = end = None
    for line in lines:
        if line.get("transition") != transition:
            continue
        if line.get("event") == "transition.start" and start is None:
            start = LogTail.ts(line)
        elif line.get("event") == "handoff.work" and line.get("node") == node and end is None:
            end = LogTail.ts(line)
    return None if start is None or end is None else (start, end)


def phase_kept(final: PocCall, new_version: str) -> bool:
    """The new version answered `pow/status` after the switch, and says GENERATING."""
    return final.route == STATUS and final.ok and final.version == new_version


def init_body_carried(instance: dict[str, Any], body: dict[str, Any]) -> bool:
    """The mock's view of the node on the new version: generating, initialised with the API node's body."""
    params = instance.get("pow_params") or {}
    return (
        instance.get("state") == "POW"
        and instance.get("pow") == GENERATING
        and all(params.get(k) == v for k, v in body.items())
    )


def _by(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def poc_figures(
    calls: Sequence[PocCall], block_at: float, window: tuple[float, float] | None, new_version: str
) -> dict[str, Any]:
    """Calls sent and failed, by route and by answering version; those sent during the node's handoff."""
    failed = [c for c in calls if not c.ok]
    errors = _by(f"{c.route} {c.status} {c.phase or c.error[:60]}".strip() for c in failed)
    during = [] if window is None else [c for c in calls if window[0] <= c.sent_wall < window[1]]
    new_answers = [c.sent_wall + c.latency_s - block_at for c in calls if c.ok and c.version == new_version]
    return {
        "calls": len(calls),
        "failed": len(failed),
        "by_route": _by(c.route.removeprefix("/api/v1/") for c in calls),
        "answered_by_version": _by(c.version or "none" for c in calls),
        "latency": summarize_ms([c.latency_s for c in calls if c.ok]),
        "handoff_window_s": None
        if window is None
        else [round(window[0] - block_at, 3), round(window[1] - block_at, 3)],
        "during_handoff": {
            "calls": len(during),
            "failed": sum(not c.ok for c in during),
            "answered_by_version": _by(c.version or "none" for c in during),
            **summarize_ms([c.latency_s for c in during if c.ok]),
        },
        "first_new_version_answer_after_block_s": round(min(new_answers), 3) if new_answers else None,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
    }


class PocDriver:
    """The API node's PoC calls to one node, through the broker's node endpoint."""

    def __init__(self, host: str, port: int, node_id: str) -> None:
        self.node_id = node_id
        self.prefix = node_segment(node_id)
        self.client = RawClient(host, port, timeout_s=30.0)

    async def call(self, route: str, body: bytes | None = None) -> PocCall:
        method = "GET" if route == STATUS else "POST"
        wall = time.time()
        started = time.perf_counter()
        try:
            reply = await self.client.request(
                method, self.prefix + route, _BODIES.get(route, b"") if body is None else body
            )
        except Exception as exc:  # every failure is a data point, whatever its kind
            return PocCall(
                route, wall, time.perf_counter() - started, 0, "", error=f"{type(exc).__name__}: {exc}"[:200]
            )
        latency = time.perf_counter() - started
        phase = ""
        if route == STATUS and reply.status == 200:
            try:
                phase = str(json.loads(reply.body).get("status", ""))
            except (ValueError, AttributeError):
                phase = "unreadable"
        error = "" if reply.status == 200 else reply.body[:200].decode("utf-8", "replace")
        return PocCall(
            route, wall, latency, reply.status, reply.headers.get(VERSION_HEADER, ""), phase, error
        )

    async def enter_generate(self, version: str) -> None:
        """stop, then pow/init/generate, as the API node starts a round; BenchError unless GENERATING."""
        for route, body in ((STOP, b""), (INIT_GENERATE, json.dumps(POW_INIT_BODY).encode())):
            done = await self.call(route, body)
            if done.status != 200:
                raise BenchError(f"{self.prefix}{route} answered {done.status}: {done.error}")
        status = await self.call(STATUS)
        if not phase_kept(status, version):
            raise BenchError(f"{self.node_id} not generating on {version} after init: {status}")

    async def load(self, schedule: Sequence[tuple[float, str]]) -> list[PocCall]:
        """Send on `schedule` whether or not earlier calls were answered; every answer."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks: list[asyncio.Task[PocCall]] = []
        for offset, route in schedule:
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the open-loop schedule
            tasks.append(asyncio.create_task(self.call(route)))
        return list(await asyncio.gather(*tasks))

    async def after_switch(self, stack: StackCalls, version: str) -> dict[str, Any]:
        """What `pow/status` says now, and whether `version` runs PoC with the API node's init body."""
        final = await self.call(STATUS)
        instances = (await stack.call_json("GET", f"{stack.mock_url(version)}/mock/instances"))["instances"]
        on_new: dict[str, Any] = next((i for i in instances if i["node"] == self.node_id), {})
        return {
            "node": self.node_id,
            "final_status": {"status": final.phase, "version": final.version, "http": final.status},
            "phase_kept": phase_kept(final, version),
            "init_body_carried": init_body_carried(on_new, POW_INIT_BODY),
        }

    def close(self) -> None:
        self.client.close()
