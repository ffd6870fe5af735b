"""`status --watch` (when it ends, what it draws) and `history` (the join), without a stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from cli.app import app
from cli.history import join, stops_needed
from cli.live_render import render_live
from cli.watch import UntilDone


def doc(
    tid: str | None = None, complete: bool = False, pending: bool = False, result: str | None = None
) -> dict[str, Any]:
    switch = None
    if tid is not None:
        switch = {"transition_id": tid, "target": "v3.0.8", "complete": complete, "remaining": []}
    plans = [{"height": 120, "node_version": "v3.0.8", "blocks_left": 5, "seconds_left": 5.0}]
    return {"switch": switch, "pending": plans if pending else [], "result": result, "stops": {}}


def test_until_done_waits_for_the_planned_switch_to_start_and_finish() -> None:
    t = UntilDone()
    assert t.see(doc("old", complete=True, pending=True, result="done")) is None  # before the height
    assert t.see(doc("120-v3.0.8", result="running")) is None
    assert t.see(doc("120-v3.0.8", complete=True, result="done")) == 0
    assert "120-v3.0.8" in t.message and "done" in t.message


def test_until_done_sees_a_switch_that_finished_between_two_polls() -> None:
    t = UntilDone()
    assert t.see(doc("old", complete=True, pending=True, result="done")) is None
    assert t.see(doc("120-v3.0.8", complete=True, result="done")) == 0


def test_until_done_exits_1_when_a_node_failed() -> None:
    t = UntilDone()
    assert t.see(doc("120-v3.0.8", result="running")) is None
    assert t.see(doc("120-v3.0.8", complete=True, result="failed")) == 1


def test_until_done_with_nothing_pending_ends_at_once_with_the_last_result() -> None:
    assert UntilDone().see(doc("old", complete=True, result="done")) == 0
    assert UntilDone().see(doc("old", complete=True, result="failed")) == 1
    t = UntilDone()
    assert t.see(doc()) == 0 and "no upgrade pending or running" in t.message


def test_until_done_does_not_end_on_the_old_switch_while_the_plan_is_pending() -> None:
    t = UntilDone()
    for _ in range(3):
        assert t.see(doc("old", complete=True, pending=True, result="done")) is None


def screen(live: dict[str, Any], error: str | None = None) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_live(live, error))
    return console.export_text()


LIVE = {
    "chain": {"height": 118, "block_time_s": 1.0},
    "current_version": "v3.0.8",
    "last_used_version": "v3.0.6",
    "pending": [],
    "readiness": None,
    "nodes": [
        {
            "id": "node-0",
            "version": "v3.0.8",
            "phase": "ready",
            "phase_for_s": 1.2,
            "in_flight": 1,
            "outcome": "ready",
            "detail": "",
        },
        {
            "id": "node-1",
            "version": "v3.0.6",
            "phase": "bring_up",
            "phase_for_s": 75.0,
            "in_flight": 0,
            "outcome": None,
            "detail": "",
        },
    ],
    "requests": {"held": 3, "served": {"v3.0.6": 40, "v3.0.8": 7}, "in_flight": {"v3.0.8": 1}},
    "stops": {
        "pending": [{"node_id": "node-2", "version": "v3.0.6", "attempts": 2, "last_error": "no answer"}],
        "retried": 1,
    },
    "switch": {
        "transition_id": "120-v3.0.8",
        "previous": "v3.0.6",
        "target": "v3.0.8",
        "height": 120,
        "reason": "plan",
        "elapsed_s": 3.5,
        "complete": False,
        "remaining": ["node-1"],
    },
    "result": "running",
}


def test_the_screen_shows_the_height_each_phase_with_its_time_requests_and_stops() -> None:
    text = screen(LIVE)
    assert "height 118" in text and "result running" in text
    assert "v3.0.6 -> v3.0.8" in text and "1 node(s) to go" in text
    assert "bring_up" in text and "1m15s" in text and "1.2 s" in text
    assert "held 3" in text and "v3.0.6: 40 served" in text and "v3.0.8: 7 served, 1 in flight" in text
    assert "pending 1" in text and "node-2 v3.0.6: 2 attempt(s), no answer" in text


def test_the_screen_shows_the_countdown_and_readiness_before_the_height() -> None:
    before = {
        **LIVE,
        "switch": None,
        "result": None,
        "pending": [
            {"height": 130, "node_version": "v3.0.9", "name": "", "blocks_left": 12, "seconds_left": 12.0}
        ],
        "readiness": {
            "target_version": "v3.0.9",
            "nodes": [
                {"node_id": "node-0", "ready": True, "reason": ""},
                {"node_id": "node-1", "ready": False, "reason": "GET /v3.0.9/api/v1/state: 404"},
            ],
        },
    }
    text = screen(before)
    assert "130" in text and "12" in text and "~12.0 s" in text
    assert "ready for v3.0.9" in text and "NOT READY: GET /v3.0.9/api/v1/state: 404" in text


def test_the_screen_says_when_the_broker_stopped_answering() -> None:
    assert "broker unreachable: ConnectError" in screen(LIVE, "ConnectError('refused')")


def test_a_node_id_with_markup_is_shown_as_text() -> None:
    hostile = {**LIVE, "nodes": [{**LIVE["nodes"][0], "id": "[bold red]x[/]"}]}  # type: ignore[index]
    assert "[bold red]x[/]" in screen(hostile)


def test_history_joins_the_registry_and_the_broker_newest_first() -> None:
    transitions = [
        {
            "transition_id": "100-v3.0.8",
            "previous": "v3.0.6",
            "current": "v3.0.8",
            "height": 100,
            "reason": "plan",
            "at": "2026-12-01T10:00:00Z",
            "actor": "",
            "note": "upgrade",
        },
        {
            "transition_id": "rollback-1",
            "previous": "v3.0.8",
            "current": "v3.0.6",
            "height": 105,
            "reason": "rollback",
            "at": "2026-12-01T10:05:00Z",
            "actor": "ops",
            "note": "bad",
        },
    ]
    switches = [
        {
            "transition_id": "100-v3.0.8",
            "handover_s": 4.2,
            "result": "done",
            "nodes_total": 2,
            "stop_calls": {"1": 1, "3": 1},
            "nodes": [
                {"node_id": "b", "outcome": "ready", "stop_calls": 3, "stop_s": 1.5},
                {"node_id": "a", "outcome": "ready", "stop_calls": 1, "stop_s": 0.01},
            ],
        },
    ]
    rows = join(transitions, switches)
    assert [r["transition_id"] for r in rows] == ["rollback-1", "100-v3.0.8"]
    assert rows[0]["handover_s"] is None and rows[0]["stops"] == "-"
    assert rows[1]["handover_s"] == 4.2 and rows[1]["result"] == "done"
    assert rows[1]["stops"] == "1 node(s) 1 call(s); 1 node(s) 3 call(s); b: ready, 3 stop call(s) in 1.50 s"


def test_stops_needed_names_a_stop_confirmed_later_and_one_still_pending() -> None:
    switch = {
        "stop_calls": {"5": 2},
        "nodes": [
            {
                "node_id": "a",
                "outcome": "stop_pending",
                "stop_calls": 5,
                "confirmed_later_at": 1.0,
                "later_retries": 2,
            },
            {"node_id": "b", "outcome": "stop_pending", "stop_calls": 5, "detail": "no answer"},
        ],
    }
    text = stops_needed(switch)
    assert "a: stop_pending, 5 stop call(s), confirmed later after 2 more attempt(s)" in text
    assert "b: stop_pending, 5 stop call(s), still pending (no answer)" in text


def test_until_done_without_watch_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--until-done", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--until-done needs --watch" in result.output


def test_a_switch_with_no_stop_to_send_needed_none() -> None:
    assert stops_needed({"stop_calls": {"0": 2}, "nodes": []}) == "no stop needed"
