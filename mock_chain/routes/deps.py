"""What the mock chain's routes share: the node they serve, kept in `app.state` by `create_rpc_app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from mock_chain.node import ChainNode

__all__ = ["NodeDep"]


def _node(conn: HTTPConnection) -> ChainNode:
    """`HTTPConnection`, not `Request`, so the websocket route gets its node the same way."""
    node: ChainNode = conn.app.state.node
    return node


NodeDep = Annotated[ChainNode, Depends(_node)]
