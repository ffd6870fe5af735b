"""The mock node's HTTP face: the CometBFT RPC routes plus the test controls, on one port.

`create_rpc_app` only assembles: what CometBFT serves, with its protocol facts, is in
`mock_chain.routes.cometbft`; what only tests use (`/advance`, `/gov/*`, `/mock/*`) in
`mock_chain.routes.controls`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from mock_chain.node import ChainNode
from mock_chain.routes import cometbft, controls

__all__ = ["create_rpc_app"]


def create_rpc_app(node: ChainNode) -> FastAPI:
    # strict_content_type=False: CometBFT reads a POST body whatever its Content-Type.
    app = FastAPI(title="mock chain (CometBFT RPC)", docs_url=None, redoc_url=None, strict_content_type=False)
    app.state.node = node
    app.exception_handler(StarletteHTTPException)(cometbft.not_found)
    app.include_router(cometbft.router)
    app.include_router(controls.router)
    return app
