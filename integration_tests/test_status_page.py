"""The broker's status page in a real headless Chromium: scripted live views, then a real switch.

The first test serves the page (behind a path prefix, as a reverse proxy would) and answers its
polls with documents the test steps through: before the height, mid-switch, a failure, the
server gone, done. The second opens the page on a whole local stack and watches a real switch,
with the terminal's `status --watch --until-done` beside it and `history` after it.
Chromium missing is a failure, not a skip: CI installs it with scripts/install-system-deps.sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from rich.console import Console

from cli.demo import _DemoRun, _height, _steady_load
from cli.stack import LocalStack, StackConfig
from integration_tests.browser import Browser, chromium_problem, decode_png
from integration_tests.conftest import REPO_ROOT
from services.broker.status_page import status_page_routes
from shared.http_serving import HttpServer

SCREENS = REPO_ROOT / "var" / "screens"
OLD, NEW = "v3.0.6", "v3.0.8"
HOSTILE = "<img src=x onerror=alert(1)>"
# From the switch's start to the new version serving: the phases a node passes through.
HANDOFF_PHASES = (
    "queued",
    "observe_work",
    "drain",
    "stop",
    "confirm_stopped",
    "check_waiting",
    "probe_target",
    "bring_up",
    "wait_healthy",
    "start_work",
    "done",
    "staging",
    "staged",
)


CLI = [sys.executable, "-m", "cli"]


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`mlnode-upgrade ARGS` in a process of its own, as an operator runs it."""
    wide = {**os.environ, "COLUMNS": "240"}  # rich's tables unfolded, whatever the test's terminal
    done = await asyncio.to_thread(
        subprocess.run, [*CLI, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=wide
    )
    return done


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium per test, killed with its process group however the test ends."""
    problem = chromium_problem()
    if problem:
        pytest.fail(problem)
    started = await Browser.launch()
    try:
        yield started
    finally:
        await started.close()


def hook(testid: str) -> str:
    """JS: the text of the element with `data-testid=testid` (null when absent)."""
    return f"(document.querySelector('[data-testid=\"{testid}\"]')?.textContent ?? null)"


NODES_JS = """[...document.querySelectorAll('tr[data-node]')].map(r => ({
  id: r.dataset.node, phase: r.dataset.phase, version: r.dataset.version, ready: r.dataset.ready,
  outcome: r.dataset.outcome, text: r.textContent}))"""
BANNER_JS = (
    "(() => { const b = document.querySelector('[data-testid=\"banner\"]'); "
    "return b.checkVisibility() ? b.textContent : null; })()"
)
ROLLBACK_JS = "document.querySelector('[data-testid=\"rollback\"]')"
STATE_JS = "document.querySelector('[data-testid=\"status\"]').dataset.state"


# -- (a) scripted live views --------------------------------------------------------------------

PREFIX = "/ops/broker"


def row(
    node_id: str,
    version: str,
    phase: str,
    for_s: float,
    in_flight: int = 0,
    outcome: str | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """One node as `upgrade/live` reports it."""
    ready = phase == "ready"
    return {
        "id": node_id,
        "version": version,
        "ready": ready,
        "phase": phase,
        "phase_for_s": for_s,
        "in_flight": in_flight,
        "outcome": outcome,
        "detail": detail,
    }


BEFORE: dict[str, Any] = {
    "at": 1764640000.1,
    "chain": {"height": 118, "block_time_s": 1.0},
    "current_version": OLD,
    "last_used_version": OLD,
    "rollback_active": False,
    "pending": [{"height": 125, "node_version": NEW, "name": "", "blocks_left": 7, "seconds_left": 7.0}],
    "readiness": {
        "target_version": NEW,
        "height": 125,
        "all_ready": False,
        "nodes": [
            {"node_id": "node-0", "ready": True, "reason": ""},
            {"node_id": HOSTILE, "ready": False, "reason": f"{NEW} answered 503 <b>loading</b>"},
        ],
        "staging": None,
    },
    "nodes": [row("node-0", OLD, "ready", 12.3, 2), row(HOSTILE, OLD, "ready", 75.0, 1)],
    "requests": {"held": 0, "served": {OLD: 120}, "in_flight": {OLD: 3}},
    "stops": {"pending": [], "retried": 0},
    "switch": None,
    "result": None,
}
SWITCH: dict[str, Any] = {
    "transition_id": f"125-{NEW}",
    "previous": OLD,
    "target": NEW,
    "height": 125,
    "reason": "plan",
    "started_at": 1764640005.3,
    "finished_at": None,
    "elapsed_s": 3.2,
    "complete": False,
    "remaining": ["node-0", HOSTILE],
}
MID = deepcopy(BEFORE) | {
    "at": 1764640008.5,
    "chain": {"height": 125, "block_time_s": 1.0},
    "current_version": NEW,
    "pending": [],
    "readiness": None,
    "nodes": [
        row("node-0", OLD, "drain", 0.8, 2),
        row(HOSTILE, NEW, "bring_up", 2.4, detail="loading <script>alert(2)</script>"),
    ],
    "requests": {"held": 3, "served": {OLD: 150, NEW: 4}, "in_flight": {OLD: 2}},
    "stops": {
        "pending": [
            {
                "node_id": "node-1",
                "version": OLD,
                "attempts": 3,
                "last_error": "timed out",
                "since": 1764640005.0,
            }
        ],
        "retried": 3,
    },
    "switch": SWITCH,
    "result": "running",
}
DONE = deepcopy(MID) | {
    "at": 1764640011.0,
    "chain": {"height": 128, "block_time_s": 1.0},
    "last_used_version": NEW,
    "rollback_active": True,  # not what a plan's switch leaves; here only to see the flag appear
    "nodes": [row(n, NEW, "ready", 1.5, outcome="ready") for n in ("node-0", HOSTILE)],
    "requests": {"held": 0, "served": {OLD: 150, NEW: 40}, "in_flight": {}},
    "stops": {"pending": [], "retried": 3},
    "switch": SWITCH | {"finished_at": 1764640010.0, "elapsed_s": 4.7, "complete": True, "remaining": []},
    "result": "done",
}


class Script:
    """What `upgrade/live` answers now: the test moves it along; None answers 503."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = BEFORE

    def app(self) -> FastAPI:
        app = FastAPI()
        app.include_router(status_page_routes(), prefix=PREFIX)

        @app.get(f"{PREFIX}/upgrade/live")
        async def live() -> JSONResponse:
            if self.answer is None:
                return JSONResponse({"detail": "scripted failure"}, status_code=503)
            return JSONResponse(self.answer)

        return app


@pytest.mark.timeout(90)
async def test_the_page_shows_each_live_view_survives_an_unreachable_broker_and_escapes_node_ids(
    browser: Browser, tmp_path: Path
) -> None:
    script = Script()
    app = script.app()
    server = await HttpServer(app, "127.0.0.1", 0, grace_s=1.0).start()
    port = server.port
    try:
        await browser.navigate(f"http://127.0.0.1:{port}{PREFIX}/")
        await browser.evaluate("window.__sameDocument = true")

        # Before the height: the countdown, readiness per node, a hostile node id as plain text.
        await browser.wait_for(f"{hook('height')} === '118'", message="the first live view")
        assert await browser.evaluate(hook("current-version")) == OLD
        assert await browser.evaluate(hook("block-time")) == "1.00 s"
        assert await browser.evaluate(hook("blocks-left")) == "7"
        assert await browser.evaluate(hook("seconds-left")) == "~7.0 s"
        assert await browser.evaluate(hook("countdown")) == f"{NEW} at height 125: 7 blocks left (~7.0 s)"
        assert await browser.evaluate(hook("readiness-target")) == f"{NEW} at height 125: "
        readiness = await browser.evaluate(
            "[...document.querySelectorAll('[data-readiness-node]')].map(r => [r.dataset.readinessNode, "
            "r.dataset.ready, r.textContent])"
        )
        assert readiness == [
            ["node-0", "true", "node-0ready—"],
            [HOSTILE, "false", f"{HOSTILE}NOT READY{NEW} answered 503 <b>loading</b>"],
        ]
        nodes = await browser.evaluate(NODES_JS)
        assert [(n["id"], n["phase"], n["version"]) for n in nodes] == [
            ("node-0", "ready", OLD),
            (HOSTILE, "ready", OLD),
        ]
        assert HOSTILE in nodes[1]["text"] and "1 min 15 s" in nodes[1]["text"]
        # Shown as text: no element was made from it or from the reason's <b> (the one script: the page's).
        assert (
            await browser.evaluate("document.querySelectorAll('img, b').length + document.scripts.length")
            == 1
        )
        assert await browser.evaluate(hook("result")) == "—"
        assert await browser.evaluate(hook("switch-empty")) == "no switch recorded yet"
        assert await browser.evaluate(BANNER_JS) is None
        assert await browser.evaluate(f"{ROLLBACK_JS}.checkVisibility()") is False

        # One failed answer: the banner says since when, the last view stays on screen.
        script.answer = None
        banner = await browser.wait_for(BANNER_JS, message="the unreachable banner")
        assert banner.startswith("broker unreachable since ") and "HTTP 503" in banner
        assert await browser.evaluate(STATE_JS) == "unreachable"
        assert await browser.evaluate(hook("height")) == "118"

        # It recovers by itself, into the middle of the switch.
        script.answer = MID
        await browser.wait_for(f"{BANNER_JS} === null && {hook('height')} === '125'", message="recovery")
        assert await browser.evaluate(STATE_JS) == "ok"
        nodes = await browser.evaluate(NODES_JS)
        assert [(n["id"], n["phase"], n["version"], n["ready"]) for n in nodes] == [
            ("node-0", "drain", OLD, "false"),
            (HOSTILE, "bring_up", NEW, "false"),
        ]
        assert "loading <script>alert(2)</script>" in nodes[1]["text"]
        assert await browser.evaluate(hook("result")) == "running"
        assert await browser.evaluate(hook("pending-empty")) == "no upgrade plan is pending"
        assert await browser.evaluate(hook("held")) == "3"
        served = await browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('[data-served-version]')].map(r => "
            "[r.dataset.servedVersion, r.querySelector('[data-testid=\"served-count\"]').textContent]))"
        )
        assert served == {OLD: "150", NEW: "4"}
        assert await browser.evaluate(hook("stops-pending")) == "1"
        assert await browser.evaluate(hook("stops-retried")) == "3"
        assert await browser.evaluate(hook("switch-versions")) == f"{OLD} → {NEW}"
        assert await browser.evaluate(hook("switch-remaining")) == f"node-0, {HOSTILE}"
        assert await browser.evaluate(hook("switch-elapsed")) == "3.2 s"
        # Draining the old and bringing up the new are told apart by colour, not only by name.
        colours = await browser.evaluate(
            "[...document.querySelectorAll('[data-testid=\"node-phase\"]')].map(b => "
            "getComputedStyle(b).backgroundColor)"
        )
        assert len(set(colours)) == 2, colours
        await browser.screenshot(SCREENS / "status-page-scripted-mid-switch.png", tmp_path / "mid.png")

        # The broker goes away altogether (connection refused), then comes back, done.
        await server.stop()
        banner = await browser.wait_for(BANNER_JS, message="the banner for a refused connection")
        assert banner.startswith("broker unreachable since ")
        script.answer = DONE
        server = await HttpServer(app, "127.0.0.1", port, grace_s=1.0).start()
        await browser.wait_for(f"{BANNER_JS} === null && {hook('result')} === 'done'", timeout=15)
        nodes = await browser.evaluate(NODES_JS)
        assert all(n["version"] == NEW and n["phase"] == "ready" and n["outcome"] == "ready" for n in nodes)
        assert await browser.evaluate(hook("last-used-version")) == NEW
        assert await browser.evaluate(f"{ROLLBACK_JS}.checkVisibility()") is True
        assert await browser.evaluate(hook("switch-complete")) == "yes"
        assert await browser.evaluate(hook("stops-pending")) == "0"
        assert await browser.evaluate("document.querySelectorAll('img').length") == 0
        assert await browser.evaluate("window.__sameDocument") is True  # no reload, ever
        assert (
            int(await browser.evaluate("document.querySelector('[data-testid=\"status\"]').dataset.renders"))
            >= 3
        )
        assert not [line for line in browser.console if "exception" in line or "dialog" in line], (
            browser.console
        )
    finally:
        await server.stop()


# -- (b) a real switch on the local stack -------------------------------------------------------

LEAD_BLOCKS = 12
STACK_ENV = (
    ("BROKER_READINESS_INTERVAL_S", "0.5"),  # readiness for the plan shows within the countdown
    ("BROKER_STAGING__SHARE", "0"),  # both nodes hand over at the height: a readable mid-switch
)


@pytest.mark.timeout(240)
async def test_the_page_follows_a_real_switch_on_the_local_stack(browser: Browser, tmp_path: Path) -> None:
    config = StackConfig(
        run_dir=tmp_path / "stack",
        block_time_s=0.5,
        voting_period_blocks=2,
        model_load_s=1.5,
        extra_env=STACK_ENV,
    )
    stack = LocalStack(config)
    watcher: asyncio.subprocess.Process | None = None
    try:
        info = await asyncio.to_thread(stack.start)
        async with httpx.AsyncClient() as client:
            run = _DemoRun(info, client, Console(quiet=True), live=False, timeout_s=60.0)
            await run.wait_until_serving(OLD)
            # The terminal's view of the same stack: with nothing pending, --until-done ends at once.
            idle = await cli("status", "--watch", "--until-done", "--run-dir", str(config.run_dir))
            assert idle.returncode == 0 and "no upgrade pending or running" in idle.stdout, idle
            # One stop of the old version answers 500: the history must say it needed a second call.
            first_node = next(iter(info.mlnodes))
            fault = {"route": "/api/v1/stop", "action": "fail", "status": 500, "times": 1}
            (await client.post(f"{info.mlnodes[first_node][OLD]}/mock/faults", json=fault)).raise_for_status()
            await browser.navigate(f"{info.broker_url}/")
            await browser.evaluate("window.__sameDocument = true")
            await browser.wait_for(
                f"(() => {{ const n = {NODES_JS}; return n.length === 2 && "
                f"n.every(x => x.version === '{OLD}' && x.phase === 'ready'); }})()",
                timeout=20,
                message=f"both nodes shown serving {OLD}",
            )
            async with _steady_load(info.broker_url, 10.0, run.stats):
                target = await run.propose(LEAD_BLOCKS)

                # Before the height: the plan, its countdown ticking down, readiness per node.
                plan = f"document.querySelector('[data-plan-height=\"{target}\"]')"
                first = int(
                    await browser.wait_for(
                        f"{plan}?.querySelector('[data-testid=\"blocks-left\"]').textContent",
                        timeout=20,
                        message=f"the plan for {NEW} at {target}",
                    )
                )
                assert await browser.evaluate(f"{plan}.dataset.planVersion") == NEW
                assert 0 < first <= LEAD_BLOCKS + config.voting_period_blocks
                assert (await browser.evaluate(hook("countdown"))).startswith(f"{NEW} at height {target}: ")
                await browser.wait_for(
                    f"+{plan}?.querySelector('[data-testid=\"blocks-left\"]').textContent < {first}",
                    timeout=10,
                    message="the countdown to go down",
                )
                await browser.wait_for(
                    "document.querySelectorAll('[data-readiness-node]').length === 2", timeout=10
                )
                assert await browser.evaluate(hook("readiness-target")) == f"{NEW} at height {target}: "
                assert await _height(client, info) < target
                watch_args = ["--until-done", "--run-dir", str(config.run_dir), "--interval", "0.2"]
                watcher = await asyncio.create_subprocess_exec(
                    *CLI, "status", "--watch", *watch_args, "--timeout", "90", cwd=REPO_ROOT,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "COLUMNS": "240"},
                )  # fmt: skip
                await browser.screenshot(
                    SCREENS / "status-page-before-height.png", tmp_path / "status-page-before-height.png"
                )

                # Mid-switch: the switch to the new version shown, a node in a handoff phase or
                # already on the new version, not every node done. (The switch record matters: the
                # broker's periodic re-check of a serving node passes through handoff phases too.)
                handoff = json.dumps(HANDOFF_PHASES)
                mid = await browser.wait_for(
                    f"(() => {{ const n = {NODES_JS}; return {hook('switch-versions')} === '{OLD} → {NEW}' "
                    f"&& n.some(x => {handoff}.includes(x.phase) || x.version === '{NEW}') "
                    f"&& !n.every(x => x.version === '{NEW}' && x.ready === 'true') && n; }})()",
                    timeout=LEAD_BLOCKS * config.block_time_s + 30,
                    interval=0.02,
                    message="a node mid-switch",
                )
                png = await browser.screenshot(
                    SCREENS / "status-page-mid-switch.png", tmp_path / "status-page-mid-switch.png"
                )
                shown = await browser.evaluate(NODES_JS)
                image = await asyncio.to_thread(decode_png, png)
                viewport = await browser.evaluate("[innerWidth, innerHeight]")
                assert [image.width, image.height] == viewport == [browser.width, browser.height]
                assert image.colours > 8, f"a screenshot of {image.colours} colours is not the page"
                assert await _height(client, info) >= target, mid

                # After: every node on the new version, the result done.
                await browser.wait_for(
                    f"(() => {{ const n = {NODES_JS}; return n.length === 2 && n.every(x => "
                    f"x.version === '{NEW}' && x.phase === 'ready'); }})() && {hook('result')} === 'done'",
                    timeout=60,
                    message=f"every node on {NEW} and the result done",
                )
            switch = await browser.evaluate(
                "[...document.querySelectorAll('[data-testid^=\"switch-\"]')]"
                ".map(e => [e.dataset.testid, e.textContent])"
            )
            served = await browser.evaluate(
                f'+document.querySelector(\'[data-served-version="{NEW}"] [data-testid="served-count"]\')'
                "?.textContent"
            )
            assert await browser.evaluate("window.__sameDocument") is True  # no reload, ever

            # The terminal's live view ended by itself with the switch, and the history tells how it went.
            out, err = await asyncio.wait_for(watcher.communicate(), 60)
            screen = out.decode()
            assert watcher.returncode == 0, (screen, err.decode())
            assert f"switch {target}-{NEW} to {NEW}: done" in screen and "result done" in screen, screen
            shown_history = await cli("history", "--run-dir", str(config.run_dir), "--json")
            assert shown_history.returncode == 0, shown_history.stderr
            newest = json.loads(shown_history.stdout)[0]
            assert (newest["height"], newest["reason"], newest["current"]) == (target, "plan", NEW)
            assert newest["result"] == "done" and newest["handover_s"] > 0
            stop_calls = {n["node_id"]: n["stop_calls"] for n in newest["switch"]["nodes"]}
            assert stop_calls == {first_node: 2, **{n: 1 for n in info.mlnodes if n != first_node}}
            table = await cli("history", "--run-dir", str(config.run_dir))
            assert f"{first_node}: ready, 2 stop call(s)" in table.stdout, table.stdout
    finally:
        if watcher is not None and watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
        await asyncio.to_thread(stack.stop)
    switch_shown = dict(switch)
    assert switch_shown["switch-versions"] == f"{OLD} → {NEW}"
    assert switch_shown["switch-height"] == str(target) and switch_shown["switch-complete"] == "yes"
    assert served > 0 and not run.stats.failures, run.stats.failures[:5]
    print(f"mid-switch screenshot ({image.colours} colours) shows {shown}")
