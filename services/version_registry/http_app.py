"""The registry over HTTP: state, history, rollback, and the ops routes."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Query

from services.version_registry.core import RollbackRefused
from services.version_registry.registry import RegistryService
from shared.ops_app import ReadinessCheck, add_ops_routes
from shared.registry_api import HistoryReply, RegistryState, RollbackRequest

__all__ = ["create_http_app"]


def create_http_app(
    service: RegistryService, admin_token: str | None, nats_checks: Sequence[ReadinessCheck]
) -> FastAPI:
    """`nats_checks` come from the composition root, which owns the connection."""
    app = FastAPI(title="mlnode-upgrade version-registry", strict_content_type=False)

    async def synced() -> bool:
        return service.latest.state.core.initialized

    add_ops_routes(
        app,
        service.metrics,
        [
            *nats_checks,
            ReadinessCheck("synced_with_chain", synced),
        ],
        service="version-registry",
    )

    @app.get("/state")
    async def state() -> RegistryState:
        return await service.state()

    @app.get("/history")
    async def history(limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> HistoryReply:
        return await service.history(limit)

    token = admin_token

    @app.post("/rollback")
    async def rollback(
        request: RollbackRequest, authorization: Annotated[str | None, Header()] = None
    ) -> RegistryState:
        if token is None:
            raise HTTPException(403, "rollback over HTTP is disabled: set VERSION_REGISTRY_ADMIN_TOKEN_FILE")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid admin token is required (Authorization: Bearer <token>)")
        try:
            stored = await service.rollback(request)
        except RollbackRefused as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return stored.state.core.view(stored.revision or 0)

    return app
