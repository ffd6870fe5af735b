"""The mock MLNode as an ASGI app: the real API surface, per-(version, node) state, faults and a log.

`create_app` only assembles: the FastAPI app with its error handler, the routers of
`mock_mlnode.routes` (one per area of the real API; its docstring lists where the mock differs
from the real MLNode, on purpose) and `PrefixDispatch` in front (`mock_mlnode.dispatch`: the
`/{version}/{node}` prefix, faults, answer headers, the request log). The instances live in
`mock_mlnode.instances`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp

from mock_mlnode.dispatch import NODE_HEADER, VERSION_HEADER, PrefixDispatch
from mock_mlnode.instances import Instance, MockNode
from mock_mlnode.routes import ROUTERS
from mock_mlnode.settings import MockMLNodeSettings
from mock_mlnode.state import GpuBusy, MLNodeError
from shared.logging import get_logger

__all__ = ["NODE_HEADER", "VERSION_HEADER", "Instance", "MockNode", "create_app"]

log = get_logger(__name__)


def create_app(settings: MockMLNodeSettings, mock: MockNode | None = None) -> ASGIApp:
    mock = mock or MockNode(settings)
    # The real MLNode's FastAPI (0.115) reads a JSON body whatever the Content-Type, and the
    # real API node sends none; a strict app would answer those calls 422.
    api = FastAPI(title="mock MLNode", version=settings.default_version, strict_content_type=False)
    api.state.mock = mock
    api.state.settings = settings
    api.exception_handler(MLNodeError)(_mlnode_error)
    for router in ROUTERS:
        api.include_router(router)
    return PrefixDispatch(api, mock)


async def _mlnode_error(request: Request, exc: MLNodeError) -> Response:
    """An `MLNodeError` as the real MLNode answers it: its status and detail, or a GPU clash as a 500."""
    settings: MockMLNodeSettings = request.app.state.settings
    if isinstance(exc, GpuBusy) and settings.gpu_busy_status == 500:
        # The real MLNode has no GPU lock: the load dies in CUDA and FastAPI answers a bare 500.
        log.warning("GPU busy, answering 500", extra={"detail": str(exc)})
        return PlainTextResponse("Internal Server Error", status_code=500)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)
