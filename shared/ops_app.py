"""`/healthz`, `/readyz` and `/metrics`, the same on every service.

`/healthz` says the process is alive; `/readyz` runs the service's readiness checks (NATS
connected, streams present, ...) and answers 503 naming what is not ready.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from shared.metrics import ServiceMetrics

__all__ = ["ReadinessCheck", "add_ops_routes", "make_ops_app", "run_checks"]

CheckResult = bool | Awaitable[bool]


@dataclass(frozen=True)
class ReadinessCheck:
    """A named yes/no question; raising counts as not ready and the error text is reported."""

    name: str
    check: Callable[[], CheckResult]


async def run_checks(checks: Sequence[ReadinessCheck]) -> tuple[bool, dict[str, Any]]:
    results: dict[str, Any] = {}
    ready = True
    for item in checks:
        try:
            outcome = item.check()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            ok = bool(outcome)
            results[item.name] = {"ok": ok}
        except Exception as exc:  # a broken check must not break /readyz itself
            ok = False
            results[item.name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        ready = ready and ok
    return ready, results


def add_ops_routes(
    app: FastAPI,
    metrics: ServiceMetrics,
    readiness: Sequence[ReadinessCheck] = (),
    service: str | None = None,
) -> None:
    name = service or metrics.service

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ready, checks = await run_checks(readiness)
        body = {"status": "ready" if ready else "not ready", "service": name, "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(content=payload, media_type=content_type)


def make_ops_app(
    metrics: ServiceMetrics, readiness: Sequence[ReadinessCheck] = (), service: str | None = None
) -> FastAPI:
    app = FastAPI(
        title=f"{service or metrics.service} ops",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        strict_content_type=False,
    )
    add_ops_routes(app, metrics, readiness, service)
    return app
