"""The live view drawn for a terminal: pure, from the broker's `/upgrade/live` document.

Kept apart from the polling loop (`cli.watch`) so every screen can be checked without a stack.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["PHASE_STYLES", "render_live"]

# The handoff's steps in the order a node goes through them, with a colour per kind of step.
PHASE_STYLES: dict[str, str] = {
    "ready": "green",
    "done": "green",
    "queued": "cyan",
    "observe_work": "yellow",
    "drain": "yellow",
    "stop": "magenta",
    "confirm_stopped": "magenta",
    "check_waiting": "yellow",
    "probe_target": "blue",
    "bring_up": "blue",
    "wait_healthy": "blue",
    "start_work": "blue",
    "staging": "blue",
    "staged": "cyan",
    "failed": "bold red",
    "starting": "dim",
}
RESULT_STYLES = {
    "running": "bold yellow",
    "done": "bold green",
    "failed": "bold red",
    "stop_pending": "bold magenta",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _head(doc: dict[str, Any], error: str | None) -> RenderableType:
    chain = doc.get("chain") or {}
    height = chain.get("height")
    block = chain.get("block_time_s")
    line = Text()
    line.append("height ", style="dim")
    line.append(str(height if height is not None else "?"), style="bold")
    if block:
        line.append(f"  ({block:.2f} s/block)", style="dim")
    line.append("   current ", style="dim")
    line.append(str(doc.get("current_version") or "-"), style="bold")
    line.append("   last used ", style="dim")
    line.append(str(doc.get("last_used_version") or "-"))
    if doc.get("rollback_active"):
        line.append("   ROLLBACK ACTIVE", style="bold red")
    result = doc.get("result")
    if result:
        line.append("   result ", style="dim")
        line.append(result, style=RESULT_STYLES.get(result, ""))
    parts: list[RenderableType] = [line]
    if error:
        parts.append(Text(f"broker unreachable: {error} (showing the last answer)", style="bold red"))
    return Group(*parts)


def _plans(doc: dict[str, Any]) -> RenderableType:
    pending = doc.get("pending") or []
    if not pending:
        return Text("no pending plans", style="dim")
    table = Table(title="pending plans", title_justify="left", expand=False)
    for col in ("height", "version", "blocks left", "time left", "name"):
        table.add_column(col)
    for plan in pending:
        seconds = plan.get("seconds_left")
        table.add_row(
            str(plan["height"]),
            str(plan["node_version"]),
            str(plan.get("blocks_left", "?")),
            f"~{_duration(seconds)}" if seconds is not None else "?",
            str(plan.get("name") or ""),
        )
    return table


def _switch(doc: dict[str, Any]) -> RenderableType | None:
    switch = doc.get("switch")
    if not switch:
        return None
    text = Text()
    text.append("switch ", style="dim")
    text.append(f"{switch.get('previous') or '(none)'} -> {switch['target']}", style="bold")
    text.append(f"  at height {switch.get('height')}  ({switch.get('reason')}, {switch['transition_id']})")
    elapsed = _duration(switch.get("elapsed_s"))
    if switch.get("complete"):
        text.append(f"  took {elapsed}")
    else:
        left = len(switch.get("remaining") or [])
        text.append(f"  running for {elapsed}, {left} node(s) to go", style="yellow")
    return text


def _nodes(doc: dict[str, Any]) -> RenderableType:
    readiness = doc.get("readiness") or {}
    target = readiness.get("target_version")
    probe = {n["node_id"]: n for n in readiness.get("nodes", [])}
    table = Table(title="nodes", title_justify="left")
    for col in ("node", "version", "phase", "for", "in flight", f"ready for {target or '-'}", "outcome"):
        table.add_column(col)
    for node in doc.get("nodes") or []:
        phase = str(node.get("phase"))
        ready = probe.get(node["id"])
        ready_text = (
            Text("-", style="dim")
            if ready is None
            else Text("ready", style="green")
            if ready.get("ready")
            else Text(f"NOT READY: {ready.get('reason', '')}", style="red")
        )
        outcome = node.get("outcome")
        outcome_text = Text("")
        if outcome:
            outcome_text = Text(outcome, style="green" if outcome == "ready" else "red")
            if node.get("detail"):
                outcome_text.append(f" ({node['detail']})", style="dim")
        table.add_row(
            Text(str(node["id"])),
            Text(str(node.get("version") or "-")),
            Text(phase, style=PHASE_STYLES.get(phase, "")),
            _duration(node.get("phase_for_s")),
            str(node.get("in_flight", 0)),
            ready_text,
            outcome_text,
        )
    return table


def _requests_and_stops(doc: dict[str, Any]) -> RenderableType:
    requests = doc.get("requests") or {}
    line = Text()
    line.append("requests  held ", style="dim")
    held = int(requests.get("held", 0))
    line.append(str(held), style="bold yellow" if held else "")
    served = requests.get("served") or {}
    in_flight = requests.get("in_flight") or {}
    for version in sorted(set(served) | set(in_flight)):
        line.append(f"   {version}: ", style="dim")
        line.append(f"{served.get(version, 0)} served, {in_flight.get(version, 0)} in flight")
    stops = doc.get("stops") or {}
    pending = stops.get("pending") or []
    line.append("\nstops     pending ", style="dim")
    line.append(str(len(pending)), style="bold magenta" if pending else "")
    line.append(f"   retried {stops.get('retried', 0)}", style="dim")
    for stop in pending:
        line.append(
            f"\n  {stop['node_id']} {stop['version']}: {stop.get('attempts', 0)} attempt(s), "
            f"{stop.get('last_error', '')}",
            style="magenta",
        )
    return line


def render_live(doc: dict[str, Any], error: str | None = None) -> RenderableType:
    """One screen of the live view; `error` when the last poll failed (the view is the last one)."""
    parts: list[RenderableType] = [_head(doc, error), _plans(doc)]
    switch = _switch(doc)
    if switch is not None:
        parts.append(switch)
    parts += [_nodes(doc), _requests_and_stops(doc)]
    return Group(*parts)
