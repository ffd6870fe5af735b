"""`mlnode-upgrade history`: every switch, as the registry decided it and the broker carried it out.

The registry knows why (height, reason, actor); the broker knows how (how long the handover
took, what each node's stop needed). `join` puts the two together by transition id; pure.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.ops import Endpoints, get_json

__all__ = ["join", "show_history", "stops_needed"]


def stops_needed(switch: dict[str, Any] | None, max_nodes: int = 6) -> str:
    """One line per switch: what the stops needed, the unusual nodes named."""
    if not switch:
        return "-"
    calls = switch.get("stop_calls") or {}
    parts = [f"{nodes} node(s) {n} call(s)" for n, nodes in calls.items() if n != "0"]
    named = []
    for node in switch.get("nodes", [])[:max_nodes]:
        if node.get("outcome") == "ready" and node.get("stop_calls", 0) <= 1:
            continue
        text = f"{node['node_id']}: {node.get('outcome')}, {node.get('stop_calls', 0)} stop call(s)"
        if node.get("stop_s") is not None:
            text += f" in {node['stop_s']:.2f} s"
        if node.get("confirmed_later_at") is not None:
            text += f", confirmed later after {node.get('later_retries', 0)} more attempt(s)"
        elif node.get("outcome") == "stop_pending":
            text += ", still pending"
        if node.get("detail"):
            text += f" ({node['detail'][:120]})"
        named.append(text)
    return "; ".join(parts + named) or "no stop needed"


def join(transitions: list[dict[str, Any]], switches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry's transitions, newest first, each with the broker's switch of the same id."""
    by_id = {s["transition_id"]: s for s in switches}
    rows = []
    for t in sorted(transitions, key=lambda t: (t.get("at") or "", t.get("height", 0)), reverse=True):
        switch = by_id.get(t["transition_id"])
        rows.append(
            {
                **t,
                "handover_s": switch.get("handover_s") if switch else None,
                "result": switch.get("result") if switch else None,
                "nodes_total": switch.get("nodes_total") if switch else None,
                "stops": stops_needed(switch),
                "switch": switch,
            }
        )
    return rows


def show_history(endpoints: Endpoints, console: Console, limit: int, as_json: bool) -> list[dict[str, Any]]:
    transitions = get_json(f"{endpoints.registry_url}/history?limit={limit}")["transitions"]
    switches = get_json(f"{endpoints.broker_url}/upgrade/history?limit={min(limit, 1000)}")["switches"]
    rows = join(transitions, switches)
    if as_json:
        console.print_json(json.dumps(rows))
        return rows
    table = Table(title="switches, newest first", title_justify="left")
    for col in ("height", "switch", "reason", "actor / note", "at", "handover", "result", "stops needed"):
        table.add_column(col, overflow="fold")
    for row in rows:
        who = " / ".join(x for x in (row.get("actor"), row.get("note")) if x)
        handover = f"{row['handover_s']:.2f} s" if row.get("handover_s") is not None else "-"
        table.add_row(
            str(row.get("height")),
            f"{row.get('previous') or '-'} -> {row.get('current')}",
            str(row.get("reason")),
            who or "-",
            str(row.get("at", ""))[:19].replace("T", " "),
            handover,
            str(row.get("result") or "-"),
            row["stops"],
        )
    console.print(table if rows else "no switches yet")
    return rows
