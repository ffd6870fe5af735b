"""The broker's HTTP face: inference forwarding, the node admin API, upgrade status, ops routes.

One router per area. Reads go through the read-only `BrokerStatus`; node changes through
`NodeAdmin`; nothing here reaches into the pool, the store or a running switch.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from services.broker.client_gone import disconnected
from services.broker.coordinator import Coordinator
from services.broker.forwarder import Forwarder
from services.broker.metrics import BrokerMetrics
from services.broker.models import NodeConfig
from services.broker.node_admin import NodeAdmin, NodeExists, NodeMissing
from services.broker.node_endpoint import NodeEndpoint
from services.broker.status import BrokerStatus
from services.broker.status_page import status_page_routes
from shared.ops_app import ReadinessCheck, add_ops_routes

__all__ = ["create_app"]


def create_app(
    coordinator: Coordinator,
    forwarder: Forwarder,
    metrics: BrokerMetrics,
    readiness: Sequence[ReadinessCheck] = (),
    admin_token: str | None = None,
    endpoint: NodeEndpoint | None = None,
) -> FastAPI:
    """`admin_token`: changing nodes needs `Authorization: Bearer <token>`; without one it is refused."""
    # The API node posts JSON with no Content-Type, as its Go client does to an MLNode.
    app = FastAPI(title="mlnode-upgrade broker", docs_url=None, redoc_url=None, strict_content_type=False)
    app.include_router(inference_routes(forwarder))
    if endpoint is not None:
        app.include_router(node_endpoint_routes(endpoint))
    app.include_router(admin_routes(coordinator.nodes, coordinator.status, admin_token))
    app.include_router(upgrade_routes(coordinator.status))
    app.include_router(status_page_routes())
    add_ops_routes(app, metrics.base, readiness)
    return app


def inference_routes(forwarder: Forwarder) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        return await forwarder.forward(
            "/v1/chat/completions", body, dict(request.headers), disconnected(request)
        )

    @router.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        body = await request.body()
        return await forwarder.forward("/tokenize", body, dict(request.headers), disconnected(request))

    return router


_ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def node_endpoint_routes(endpoint: NodeEndpoint) -> APIRouter:
    """`/nodes/{node_id}/...`, with the client's version prefix before or after the segment."""
    router = APIRouter()

    @router.api_route("/nodes/{rest:path}", methods=_ALL_METHODS, include_in_schema=False)
    async def node_call(request: Request) -> Response:
        return await endpoint.handle(request)

    @router.api_route("/{version}/nodes/{rest:path}", methods=_ALL_METHODS, include_in_schema=False)
    async def versioned_node_call(request: Request) -> Response:
        return await endpoint.handle(request)

    return router


def admin_routes(nodes: NodeAdmin, view: BrokerStatus, admin_token: str | None) -> APIRouter:
    """Reading needs no token; changing does."""
    router = APIRouter(prefix="/admin/v1/nodes")

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if admin_token is None:
            raise HTTPException(403, "changing nodes over HTTP is disabled: set BROKER_ADMIN_TOKEN_FILE")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "a valid admin token is required (Authorization: Bearer <token>)")

    admin = [Depends(require_admin)]

    @router.get("")
    async def list_nodes() -> list[dict[str, Any]]:
        return [status.as_json() for status in view.nodes()]

    @router.get("/{node_id}")
    async def get_node(node_id: str) -> dict[str, Any]:
        status = view.node(node_id)
        if status is None:
            raise HTTPException(404, f"no node {node_id!r}")
        return status.as_json()

    @router.post("", status_code=201, dependencies=admin)
    async def add_node(node: NodeConfig) -> dict[str, Any]:
        try:
            await nodes.add(node)
        except NodeExists as exc:
            raise HTTPException(409, str(exc)) from None
        return view.of(node).as_json()

    @router.put("/{node_id}", dependencies=admin)
    async def update_node(node_id: str, node: NodeConfig) -> dict[str, Any]:
        if node.id != node_id:
            raise HTTPException(400, f"the body's id {node.id!r} differs from the path's {node_id!r}")
        try:
            await nodes.update(node)
        except NodeMissing:
            raise HTTPException(404, f"no node {node_id!r}; use POST to add it") from None
        return view.of(node).as_json()

    @router.delete("/{node_id}", dependencies=admin)
    async def remove_node(node_id: str) -> dict[str, str]:
        try:
            await nodes.remove(node_id)
        except NodeMissing:
            raise HTTPException(404, f"no node {node_id!r}") from None
        return {"status": "removed", "id": node_id}

    return router


def upgrade_routes(view: BrokerStatus) -> APIRouter:
    router = APIRouter(prefix="/upgrade")

    @router.get("/readiness")
    async def upgrade_readiness() -> JSONResponse:
        report = view.readiness
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

    @router.get("/live")
    async def upgrade_live() -> dict[str, Any]:
        """Everything `mlnode-upgrade status --watch` and the status page show, in one document."""
        return await view.live()

    @router.get("/history")
    async def upgrade_history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """The broker's side of each switch: how long the handover took, what each stop needed."""
        return await view.history(limit)

    @router.get("/status")
    async def upgrade_status() -> dict[str, Any]:
        record = view.record
        current = view.current
        return {
            "current_version": current.raw if current else None,
            "transition": None
            if record is None
            else {
                **record.model_dump(mode="json", exclude={"seen"}),
                "complete": record.complete,
                "remaining": list(record.remaining),
                "running": view.switch_running(),
            },
            "nodes": [status.state() | {"id": status.config.id} for status in view.nodes()],
            "pending_stops": [p.model_dump(mode="json") for p in await view.pending_stops()],
        }

    return router
