"""`mlnode-upgrade status --watch`: the live view, redrawn in place until Ctrl-C or the switch ends.

The broker's `/upgrade/live` is polled; what to draw is `cli.live_render`, when to stop is
`UntilDone` (pure, so its rules are unit-tested without a stack).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from cli.live_render import render_live
from cli.ops import Endpoints

__all__ = ["UntilDone", "watch"]


@dataclass
class UntilDone:
    """When `--until-done` ends, and with which exit code.

    It waits for the switch that runs when the watch starts, or for the next one when a plan is
    pending; with neither, there is nothing to wait for and the last switch's result is the answer.
    """

    baseline: str | None = None  # the switch id at the first answer
    waiting: bool = False
    started: bool = False
    message: str = ""
    code: int | None = None  # set once the watch should end
    _first: bool = field(default=True, repr=False)

    def see(self, doc: dict[str, Any]) -> int | None:
        switch = doc.get("switch") or None
        tid = switch["transition_id"] if switch else None
        complete = bool(switch and switch.get("complete"))
        if self._first:
            self._first = False
            self.baseline = tid
            self.waiting = bool(doc.get("pending")) or (switch is not None and not complete)
            if not self.waiting:
                self.message = "no upgrade pending or running"
                return self._end(doc, switch)
        if switch is not None and not complete:
            self.started = True
        if complete and (self.started or tid != self.baseline):
            return self._end(doc, switch)
        return None

    def _end(self, doc: dict[str, Any], switch: dict[str, Any] | None) -> int:
        result = doc.get("result")
        if switch is None:
            self.message = f"{self.message}; no switch yet".lstrip("; ")
            self.code = 0
            return 0
        summary = f"switch {switch['transition_id']} to {switch['target']}: {result}"
        self.message = f"{self.message}; last {summary}" if self.message else summary
        pending = (doc.get("stops") or {}).get("pending") or []
        if pending:
            self.message += f" ({len(pending)} stop(s) still pending, retried in the background)"
        self.code = 1 if result == "failed" else 0
        return self.code


def _poll(client: httpx.Client, url: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return None, repr(exc)
    if response.status_code != 200:
        return None, f"{url} answered {response.status_code}"
    try:
        doc = response.json()
    except ValueError:
        return None, f"{url} answered something that is not JSON"
    return (doc, None) if isinstance(doc, dict) else (None, f"{url} answered {type(doc).__name__}")


def watch(
    endpoints: Endpoints,
    console: Console,
    *,
    until_done: bool,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
) -> int:
    """Redraw until Ctrl-C (exit 0), or until the switch is over with `until_done`.

    Exit codes: 0 done (or Ctrl-C), 1 a node failed, 3 the timeout passed first, 4 the broker
    never answered.
    """
    url = f"{endpoints.broker_url}/upgrade/live"
    tracker = UntilDone()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    code: int | None = None
    with httpx.Client(timeout=5.0) as client, Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                doc, error = _poll(client, url)
                if doc is not None:
                    last = doc
                    if until_done:
                        code = tracker.see(doc)
                if last is not None:
                    live.update(render_live(last, error), refresh=True)
                else:
                    live.update(f"waiting for the broker at {url}: {error}", refresh=True)
                if code is not None:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    code = 3 if last is not None else 4
                    tracker.message = f"gave up after {timeout_s:.0f} s"
                    break
                time.sleep(interval_s)  # the poll period, not a synchronisation
        except KeyboardInterrupt:
            return 0
    if tracker.message:
        console.print(tracker.message)
    return code or 0
