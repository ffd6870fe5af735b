"""Thin clients of the running services: status, nodes, rollback.

They find the services through the local stack's `stack.json` by default, or through explicit
URLs (`--registry-url`, `--broker-url`, `--rpc-url`) for any other deployment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from cli.stack import StackInfo
from shared.chain_status import parse_status_reply
from shared.timestamps import rfc3339

__all__ = [
    "Endpoints",
    "OpsError",
    "add_node",
    "get_json",
    "list_nodes",
    "remove_node",
    "rollback",
    "show_status",
]


class OpsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    registry_url: str
    broker_url: str
    rpc_url: str
    token: str | None = None

    @classmethod
    def resolve(
        cls,
        run_dir: Path,
        registry_url: str | None,
        broker_url: str | None,
        rpc_url: str | None,
        token_file: Path | None,
    ) -> Endpoints:
        info: StackInfo | None = None
        if not (registry_url and broker_url and rpc_url):
            try:
                info = StackInfo.load(run_dir)
            except FileNotFoundError as exc:
                raise OpsError(f"{exc}; or pass --registry-url, --broker-url and --rpc-url") from None
        token = token_file.read_text().strip() if token_file else (info.admin_token() if info else None)
        return cls(
            registry_url=(registry_url or (info.registry_url if info else "")).rstrip("/"),
            broker_url=(broker_url or (info.broker_url if info else "")).rstrip("/"),
            rpc_url=(rpc_url or (info.chain_rpc_url if info else "")).rstrip("/"),
            token=token,
        )

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


def get_json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        raise OpsError(f"cannot reach {url}: {exc!r}") from None
    if response.status_code != 200:
        raise OpsError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _block_time_s(rpc_url: str, height: int, span: int = 10) -> float | None:
    """The average block time over the last `span` blocks, for the countdown."""
    if height <= span:
        return None
    try:
        new = get_json(f"{rpc_url}/block?height={height}")["result"]["block"]["header"]["time"]
        old = get_json(f"{rpc_url}/block?height={height - span}")["result"]["block"]["header"]["time"]
    except (OpsError, KeyError, TypeError):
        return None

    return (rfc3339(new).timestamp() - rfc3339(old).timestamp()) / span


def show_status(endpoints: Endpoints, console: Console, as_json: bool = False) -> dict[str, Any]:
    registry = get_json(f"{endpoints.registry_url}/state")
    height = parse_status_reply(get_json(f"{endpoints.rpc_url}/status")).height
    broker = get_json(f"{endpoints.broker_url}/upgrade/status")
    readiness = get_json(f"{endpoints.broker_url}/upgrade/readiness")
    block_time = _block_time_s(endpoints.rpc_url, height)
    pending = [
        {
            **plan,
            "blocks_left": plan["height"] - height,
            "seconds_left": round((plan["height"] - height) * block_time, 1) if block_time else None,
        }
        for plan in registry.get("pending", [])
    ]
    report = {
        "height": height,
        "current_version": registry.get("current_version"),
        "last_used_version": registry.get("last_used_version"),
        "rollback_active": registry.get("rollback_active"),
        "pending": pending,
        "nodes": broker.get("nodes", []),
        "readiness": readiness,
    }
    if as_json:
        console.print_json(json.dumps(report))
        return report
    head = Table(show_header=False, title="versions")
    head.add_row("chain height", str(height))
    head.add_row("current", str(report["current_version"]))
    head.add_row("last used (all nodes handed over)", str(report["last_used_version"]))
    if report["rollback_active"]:
        head.add_row("rollback", "active until the next plan")
    console.print(head)
    plans = Table(title="pending plans")
    for col in ("height", "version", "blocks left", "time left"):
        plans.add_column(col)
    for plan in pending:
        left = f"~{plan['seconds_left']} s" if plan["seconds_left"] is not None else "?"
        plans.add_row(str(plan["height"]), plan["node_version"], str(plan["blocks_left"]), left)
    console.print(plans if pending else "no pending plans")
    staging = readiness.get("staging") or {}
    if staging.get("early"):
        console.print(
            f"staged switch: {', '.join(staging['early'])} go to {readiness.get('target_version')} "
            f"from height {staging.get('start_height')} (~{staging.get('lead_s')} s ahead; "
            f"staged: {', '.join(staging.get('staged', [])) or 'none yet'}); capacity in the window: "
            f"old {staging.get('old_capacity')}, new {staging.get('new_capacity')}"
        )
    elif staging.get("why_not"):
        console.print(f"staged switch: none ({staging['why_not']})")
    probe = {n["node_id"]: n for n in readiness.get("nodes", [])}
    nodes = Table(title="nodes")
    for col in ("node", "serving", "ready", "phase", f"target {readiness.get('target_version') or '-'}"):
        nodes.add_column(col)
    for node in report["nodes"]:
        target = probe.get(node["id"])
        target_text = (
            "-" if target is None else ("ready" if target["ready"] else f"NOT READY: {target['reason']}")
        )
        nodes.add_row(node["id"], str(node.get("version")), "yes" if node.get("ready") else "no",
                      str(node.get("phase")), target_text)  # fmt: skip
    console.print(nodes)
    return report


def list_nodes(endpoints: Endpoints) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = get_json(f"{endpoints.broker_url}/admin/v1/nodes")
    return nodes


def _admin(method: str, url: str, endpoints: Endpoints, body: Any = None) -> Any:
    try:
        response = httpx.request(method, url, json=body, headers=endpoints.auth(), timeout=10.0)
    except httpx.HTTPError as exc:
        raise OpsError(f"cannot reach {url}: {exc!r}") from None
    if response.status_code >= 300:
        raise OpsError(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def add_node(endpoints: Endpoints, node: dict[str, Any]) -> Any:
    return _admin("POST", f"{endpoints.broker_url}/admin/v1/nodes", endpoints, node)


def remove_node(endpoints: Endpoints, node_id: str) -> Any:
    return _admin("DELETE", f"{endpoints.broker_url}/admin/v1/nodes/{node_id}", endpoints)


def rollback(endpoints: Endpoints, version: str, actor: str, reason: str) -> Any:
    body = {"version": version, "actor": actor, "reason": reason}
    return _admin("POST", f"{endpoints.registry_url}/rollback", endpoints, body)
