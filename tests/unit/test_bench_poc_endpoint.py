"""The zero-downtime benchmark's PoC part: schedule, verdicts and figures, without a stack."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench.poc_endpoint import (
    STATUS,
    VALIDATE,
    PocCall,
    PocDriver,
    PocPlan,
    handoff_window,
    init_body_carried,
    phase_kept,
    poc_figures,
    poc_schedule,
)
from bench.stack_calls import StackCalls
from bench.stack_config import StackConfig
from devtools.api_node_poc import POW_INIT_BODY, PROOF_BATCH

OLD, NEW = "v3.0.6", "v3.0.8"
REQUESTS = Path(__file__).parents[2] / "integration_tests" / "real_clients" / "mlnode_requests.json"


def _call(route: str = STATUS, at: float = 0.0, status: int = 200, version: str = OLD, **kw: Any) -> PocCall:
    phase = kw.pop("phase", "GENERATING" if route == STATUS and status == 200 else "")
    return PocCall(route, at, kw.pop("latency_s", 0.01), status, version, phase, **kw)


def test_the_bodies_are_the_real_api_nodes() -> None:
    calls = {c["name"]: c for c in json.loads(REQUESTS.read_text())["calls"]}
    assert calls["InitGenerate"]["path"] == "/api/v1/pow/init/generate"
    assert calls["InitGenerate"]["body"] == POW_INIT_BODY
    assert calls["ValidateBatch"]["path"] == VALIDATE
    assert calls["ValidateBatch"]["body"] == PROOF_BATCH
    assert "node_id" in PROOF_BATCH


def test_schedule_is_the_base_rate_plus_a_burst_from_the_block_alternating_routes() -> None:
    schedule = poc_schedule(
        PocPlan(rate_per_s=2, burst_per_s=10, burst_s=0.3), duration_s=2.0, burst_at_s=1.0
    )
    assert [o for o, _ in schedule] == [0.0, 0.5, 1.0, 1.1, 1.2, 1.5]  # 1.0 once, though in both
    assert [r for _, r in schedule] == [STATUS, VALIDATE] * 3


def test_schedule_stays_within_the_run() -> None:
    schedule = poc_schedule(PocPlan(1, 10, 1.0), duration_s=1.5, burst_at_s=1.0)
    assert max(o for o, _ in schedule) < 1.5
    assert poc_schedule(PocPlan(0, 0, 0), 5.0, 1.0) == []


@pytest.mark.parametrize(
    ("call", "ok"),
    [
        (_call(STATUS), True),
        (_call(STATUS, phase="NOT_LOADED"), False),  # the API node would see its node leave the round
        (_call(VALIDATE), True),
        (_call(VALIDATE, status=400, error="PoW is not running"), False),
        (_call(STATUS, status=503, version=""), False),
        (_call(VALIDATE, status=0, version="", error="TimeoutError"), False),
    ],
)
def test_a_call_is_ok_only_answered_200_and_status_generating(call: PocCall, ok: bool) -> None:
    assert call.ok is ok


def test_the_phase_is_kept_only_when_the_new_version_says_generating() -> None:
    assert phase_kept(_call(STATUS, version=NEW), NEW)
    assert not phase_kept(_call(STATUS, version=OLD), NEW)
    assert not phase_kept(_call(STATUS, version=NEW, phase="IDLE"), NEW)
    assert not phase_kept(_call(VALIDATE, version=NEW), NEW)


def test_init_body_carried_needs_generating_with_the_same_body() -> None:
    params = {**POW_INIT_BODY, "extra_default": 1}  # the MLNode may add its defaults
    assert init_body_carried({"state": "POW", "pow": "GENERATING", "pow_params": params}, POW_INIT_BODY)
    assert not init_body_carried({"state": "POW", "pow": "VALIDATING", "pow_params": params}, POW_INIT_BODY)
    other = {**POW_INIT_BODY, "block_height": 121}
    assert not init_body_carried({"state": "POW", "pow": "GENERATING", "pow_params": other}, POW_INIT_BODY)
    assert not init_body_carried({}, POW_INIT_BODY)


def _line(event: str, ts: str, transition: str = "12-v3.0.8", **kw: Any) -> dict[str, Any]:
    return {"event": event, "ts": ts, "transition": transition, **kw}


def test_handoff_window_from_the_switch_start_to_the_nodes_work_line() -> None:
    lines = [
        _line("transition.start", "2026-01-01T00:00:00.000Z", transition="8-v3.0.6"),
        _line("handoff.work", "2026-01-01T00:00:00.500Z", transition="8-v3.0.6", node="node-2"),
        _line("transition.start", "2026-01-01T00:00:10.000Z"),
        _line("handoff.work", "2026-01-01T00:00:10.050Z", node="node-0"),
        _line("handoff.work", "2026-01-01T00:00:10.080Z", node="node-2"),
    ]
    window = handoff_window(lines, "12-v3.0.8", "node-2")
    assert window is not None
    assert window[1] - window[0] == pytest.approx(0.08)
    assert handoff_window(lines[:3], "12-v3.0.8", "node-2") is None


def test_figures_count_by_route_version_and_handoff() -> None:
    calls = [
        _call(STATUS, at=99.0),
        _call(VALIDATE, at=99.5),
        _call(STATUS, at=100.05, version=NEW, latency_s=0.06),
        _call(VALIDATE, at=100.06, version=NEW, latency_s=0.05),
        _call(STATUS, at=100.07, status=503, version="", error="node-2 is being handed over"),
        _call(STATUS, at=101.0, version=NEW),
    ]
    figures = poc_figures(calls, block_at=100.0, window=(100.02, 100.1), new_version=NEW)
    assert (figures["calls"], figures["failed"]) == (6, 1)
    assert figures["by_route"] == {"pow/status": 4, "pow/validate": 2}
    assert figures["answered_by_version"] == {"none": 1, OLD: 2, NEW: 3}
    during = figures["during_handoff"]
    assert (during["calls"], during["failed"], during["answered_by_version"]) == (3, 1, {"none": 1, NEW: 2})
    assert during["max_ms"] == 60.0
    assert figures["handoff_window_s"] == [0.02, 0.1]
    assert figures["first_new_version_answer_after_block_s"] == pytest.approx(0.11)
    assert figures["errors"] == {"/api/v1/pow/status 503 node-2 is being handed over": 1}


def test_figures_without_a_window() -> None:
    figures = poc_figures([_call()], block_at=0.0, window=None, new_version=NEW)
    assert figures["handoff_window_s"] is None and figures["during_handoff"]["calls"] == 0
    assert figures["first_new_version_answer_after_block_s"] is None


async def test_driver_reads_the_answering_version_and_the_phase() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0])
        body = b'{"status":"GENERATING","is_model_initialized":true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-broker-version: v3.0.8\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver = PocDriver("127.0.0.1", port, "node-2")
    try:
        call = await driver.call(STATUS)
    finally:
        driver.close()
        server.close()
        await server.wait_closed()
    assert seen == [b"GET /nodes/node-2/api/v1/pow/status HTTP/1.1"]
    assert (call.status, call.version, call.phase, call.ok) == (200, NEW, "GENERATING", True)


class _Status(StackCalls):
    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.cfg = StackConfig(run_dir=Path("unused"), nodes=len(nodes))
        self._nodes = nodes

    async def broker_status(self) -> dict[str, Any]:
        return {"nodes": self._nodes}


async def test_settled_counts_a_node_in_pow_on_the_version_as_settled() -> None:
    serving = {"id": "node-0", "version": NEW, "ready": True, "phase": "ready"}
    in_pow = {"id": "node-1", "version": NEW, "ready": False, "phase": "pow"}
    assert await _Status([serving, in_pow]).all_serving(NEW, frozenset({"node-1"}))
    assert not await _Status([serving, in_pow]).all_serving(NEW)
    assert not await _Status([serving, {**in_pow, "version": OLD}]).all_serving(NEW, frozenset({"node-1"}))
    assert not await _Status([serving, {**in_pow, "phase": "failed"}]).all_serving(NEW, frozenset({"node-1"}))
