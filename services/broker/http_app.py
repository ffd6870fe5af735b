"""The broker's HTTP face: inference forwarding, the node admin API, upgrade status, ops routes."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from services.broker.coordinator import Coordinator, NodeExists, NodeMissing
from services.broker.forwarder import Forwarder
from services.broker.metrics import BrokerMetrics
from services.broker.models import NodeConfig
from shared.ops_app import ReadinessCheck, add_ops_routes

__all__ = ["create_app"]


def _node_view(coordinator: Coordinator, node: NodeConfig) -> dict[str, Any]:
    slot = coordinator.pool.slots.get(node.id)
    status: dict[str, Any] = {"version": None, "ready": False, "phase": "unknown", "in_flight": 0}
    if slot is not None:
        status = {
            "version": slot.version.raw if slot.version else None,
            "ready": slot.ready,
            "phase": slot.phase,
            "in_flight": sum(slot.in_flight.values()),
        }
    return {**node.model_dump(mode="json"), "status": status}


def create_app(
    coordinator: Coordinator,
    forwarder: Forwarder,
    metrics: BrokerMetrics,
    readiness: Sequence[ReadinessCheck] = (),
    admin_token: str | None = None,
) -> FastAPI:
    """`admin_token`: changing nodes needs `Authorization: Bearer <token>`; without one it is refused."""
    # The API node posts JSON with no Content-Type, as its Go client does to an MLNode.
    app = FastAPI(title="mlnode-upgrade broker", docs_url=None, redoc_url=None, strict_content_type=False)

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if admin_token is None:
            raise HTTPException(403, "changing nodes over HTTP is disabled: set BROKER_ADMIN_TOKEN_FILE")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "a valid admin token is required (Authorization: Bearer <token>)")

    admin = [Depends(require_admin)]

    # -- inference ---------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forwarder.forward("/v1/chat/completions", await request.body(), dict(request.headers))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return await forwarder.forward("/tokenize", await request.body(), dict(request.headers))

    # -- admin -------------------------------------------------------------------------------

    def _stored(node_id: str) -> NodeConfig:
        slot = coordinator.pool.slots.get(node_id)
        if slot is None:
            raise HTTPException(404, f"no node {node_id!r}")
        return slot.config

    @app.get("/admin/v1/nodes")
    async def list_nodes() -> list[dict[str, Any]]:
        return [_node_view(coordinator, slot.config) for slot in coordinator.pool.slots.values()]

    @app.get("/admin/v1/nodes/{node_id}")
    async def get_node(node_id: str) -> dict[str, Any]:
        return _node_view(coordinator, _stored(node_id))

    @app.post("/admin/v1/nodes", status_code=201, dependencies=admin)
    async def add_node(node: NodeConfig) -> dict[str, Any]:
        try:
            await coordinator.add_node(node)
        except NodeExists as exc:
            raise HTTPException(409, str(exc)) from None
        return _node_view(coordinator, node)

    @app.put("/admin/v1/nodes/{node_id}", dependencies=admin)
    async def update_node(node_id: str, node: NodeConfig) -> dict[str, Any]:
        if node.id != node_id:
            raise HTTPException(400, f"the body's id {node.id!r} differs from the path's {node_id!r}")
        try:
            await coordinator.update_node(node)
        except NodeMissing:
            raise HTTPException(404, f"no node {node_id!r}; use POST to add it") from None
        return _node_view(coordinator, node)

    @app.delete("/admin/v1/nodes/{node_id}", dependencies=admin)
    async def remove_node(node_id: str) -> dict[str, str]:
        try:
            await coordinator.remove_node(node_id)
        except NodeMissing:
            raise HTTPException(404, f"no node {node_id!r}") from None
        return {"status": "removed", "id": node_id}

    # -- upgrade -----------------------------------------------------------------------------

    @app.get("/upgrade/readiness")
    async def upgrade_readiness() -> JSONResponse:
        report = coordinator.readiness
        if report is None:
            return JSONResponse(
                {
                    "target_version": None,
                    "all_ready": None,
                    "nodes": [],
                    "message": "no upgrade plan is pending",
                }
            )
        body = report.model_dump(mode="json")
        body["all_ready"] = all(n.ready for n in report.nodes)
        return JSONResponse(body)

    @app.get("/upgrade/status")
    async def upgrade_status() -> dict[str, Any]:
        record = coordinator.record
        pending = await coordinator.store.pending.load()
        current = coordinator.pool.current
        return {
            "current_version": current.raw if current else None,
            "transition": None
            if record is None
            else {
                **record.model_dump(mode="json", exclude={"seen"}),
                "complete": record.complete,
                "remaining": list(record.remaining),
                "running": coordinator.transition_running(),
            },
            "nodes": [
                _node_view(coordinator, slot.config)["status"] | {"id": node_id}
                for node_id, slot in coordinator.pool.slots.items()
            ],
            "pending_stops": [p.model_dump(mode="json") for p in pending.items],
        }

    add_ops_routes(app, metrics.base, readiness)
    return app
