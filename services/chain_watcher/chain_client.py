"""Talking to a chain node: CometBFT JSON-RPC over HTTP, the NewBlock websocket, Cosmos gRPC.

Every failure becomes a `ChainError` with a message naming the node and the call, so the service
can log it, count it and retry without knowing about httpx, websockets or grpc.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect

from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.inference.inference import query_pb2, query_pb2_grpc
from services.chain_watcher.core import ObservedBlock, ObservedPlan
from services.chain_watcher.frames import (
    IgnoredEvent,
    MalformedFrame,
    RpcReply,
    parse_frame,
    subscribe_request,
)
from shared.chain_status import ChainStatus, ChainStatusError, parse_status
from shared.timestamps import parse_rfc3339

__all__ = [
    "HEIGHT_HEADER",
    "ChainError",
    "ChainQueries",
    "ChainStatus",
    "CometRpc",
    "NewBlockSubscription",
    "QueryError",
    "RpcError",
]

HEIGHT_HEADER = "x-cosmos-block-height"  # Cosmos SDK: answer from the state after this block
MAX_PLAN_PAGES = 100_000


class ChainError(RuntimeError):
    """The chain node could not be reached or gave an answer we cannot use."""


class RpcError(ChainError):
    """The node answered a JSON-RPC call with an error (e.g. a height it does not have)."""


class QueryError(ChainError):
    """A gRPC query failed; `code` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None) -> None:
        super().__init__(message)
        self.code = code


def _int_string(raw: Any, what: str) -> int:
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ChainError(f"{what} is {raw!r}, expected a decimal string")


class CometRpc:
    """`/status` and `/block` over HTTP (URI form, as `curl node:26657/status` does)."""

    def __init__(self, rpc_url: str, timeout_s: float) -> None:
        self.rpc_url = rpc_url
        self._http = httpx.AsyncClient(base_url=rpc_url, timeout=timeout_s)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ChainError(f"GET {self.rpc_url}{path}: {exc!r}") from exc
        try:
            doc = response.json()
        except ValueError:
            raise ChainError(f"GET {self.rpc_url}{path}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(doc, dict):
            raise ChainError(f"GET {self.rpc_url}{path}: not a JSON-RPC response")
        if doc.get("error"):
            err = doc["error"]
            detail = f"{err.get('message', '')}: {err.get('data', '')}" if isinstance(err, dict) else str(err)
            raise RpcError(f"GET {self.rpc_url}{path}: {detail}")
        if not isinstance(doc.get("result"), dict):
            raise ChainError(f"GET {self.rpc_url}{path}: HTTP {response.status_code} without a result")
        return doc["result"]

    async def status(self) -> ChainStatus:
        result = await self._get("/status")
        try:
            return parse_status(result)
        except ChainStatusError as exc:
            if str(exc) == "no sync_info":
                raise ChainError(f"GET {self.rpc_url}/status: no sync_info") from None
            raise ChainError(str(exc)) from None

    async def block(self, height: int) -> ObservedBlock:
        """Block `height` as this node serves it; `RpcError` when the node refuses the height."""
        result = await self._get("/block", {"height": str(height)})
        try:
            header = result["block"]["header"]
            got = _int_string(header["height"], "block.header.height")
            block_hash = result["block_id"]["hash"]
        except (KeyError, TypeError) as exc:
            raise ChainError(f"GET {self.rpc_url}/block?height={height}: missing {exc}") from None
        if got != height:
            raise ChainError(f"GET {self.rpc_url}/block?height={height} answered height {got}")
        return ObservedBlock(
            height=height,
            hash=block_hash if isinstance(block_hash, str) and len(block_hash) == 64 else None,
            time=parse_rfc3339(header.get("time")),
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class NewBlockSubscription:
    """One websocket connection subscribed to `tm.event='NewBlock'`; iterate it for blocks.

    Malformed frames go to `on_malformed` and are skipped. Iteration ends with `ChainError` when
    the socket closes or the node refuses the subscription; reconnecting is the caller's job.
    """

    SUBSCRIBE_ID = "1"

    def __init__(
        self,
        ws: ClientConnection,
        on_malformed: Callable[[str, str], None],
        on_ignored: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.on_malformed = on_malformed
        self.on_ignored = on_ignored

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        open_timeout_s: float,
        max_message_bytes: int,
        on_malformed: Callable[[str, str], None],
        on_ignored: Callable[[str], None] | None = None,
    ) -> AsyncIterator[NewBlockSubscription]:
        try:
            async with connect(
                url,
                open_timeout=open_timeout_s,
                max_size=max_message_bytes,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            ) as ws:
                subscription = cls(ws, on_malformed, on_ignored)
                await subscription._subscribe(open_timeout_s)
                yield subscription
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise ChainError(f"websocket {url}: {exc!r}") from exc

    async def _subscribe(self, timeout_s: float) -> None:
        """Send the subscription and wait for its acknowledgement (events may not precede it)."""
        await self.ws.send(subscribe_request(self.SUBSCRIBE_ID))
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self._next_frame()
                if isinstance(frame, RpcReply) and frame.id == self.SUBSCRIBE_ID:
                    if frame.error:
                        raise ChainError(f"the node refused the NewBlock subscription: {frame.error}")
                    return

    async def _next_frame(self) -> ObservedBlock | RpcReply | IgnoredEvent:
        while True:
            raw = await self.ws.recv()
            try:
                return parse_frame(raw)
            except MalformedFrame as exc:
                text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
                self.on_malformed(str(exc), text[:512])

    async def blocks(self) -> AsyncIterator[ObservedBlock]:
        while True:
            frame = await self._next_frame()
            if isinstance(frame, ObservedBlock):
                yield frame
            elif isinstance(frame, IgnoredEvent):
                if self.on_ignored is not None:
                    self.on_ignored(frame.type)
            elif frame.error:
                raise ChainError(f"the node sent an error on the subscription: {frame.error}")


class ChainQueries:
    """The `inference.inference.Query` calls the watcher needs, optionally pinned to a height."""

    def __init__(self, address: str, timeout_s: float, page_size: int = 100) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.page_size = page_size
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = query_pb2_grpc.QueryStub(self._channel)

    @staticmethod
    def _metadata(height: int | None) -> tuple[tuple[str, str], ...]:
        return ((HEIGHT_HEADER, str(height)),) if height else ()

    def _error(self, method: str, height: int | None, exc: grpc.aio.AioRpcError) -> QueryError:
        at = f" at height {height}" if height else ""
        return QueryError(f"gRPC {self.address} {method}{at}: {exc.code().name} {exc.details()}", exc.code())

    async def partial_upgrades(self, height: int | None) -> list[ObservedPlan]:
        """Every stored partial upgrade, following `next_key` to the last page."""
        plans: list[ObservedPlan] = []
        key = b""
        seen: set[bytes] = set()
        for _ in range(MAX_PLAN_PAGES):
            request = query_pb2.QueryAllPartialUpgradeRequest(
                pagination=pagination_pb2.PageRequest(key=key, limit=self.page_size)
            )
            try:
                page = await self._stub.PartialUpgradeAll(
                    request, metadata=self._metadata(height), timeout=self.timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                raise self._error("PartialUpgradeAll", height, exc) from None
            plans += [
                ObservedPlan(
                    height=p.height,
                    node_version=p.node_version,
                    name=p.name,
                    api_binaries_json=p.api_binaries_json,
                )
                for p in page.partialUpgrade
            ]
            key = page.pagination.next_key
            if not key:
                return plans
            if key in seen:
                raise ChainError(f"gRPC {self.address} PartialUpgradeAll: next_key {key.hex()} repeats")
            seen.add(key)
        raise ChainError(f"gRPC {self.address} PartialUpgradeAll: more than {MAX_PLAN_PAGES} pages")

    async def mlnode_version(self, height: int | None) -> str:
        try:
            response = await self._stub.MLNodeVersion(
                query_pb2.QueryGetMLNodeVersionRequest(),
                metadata=self._metadata(height),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error("MLNodeVersion", height, exc) from None
        return response.mlnode_version.current_version

    async def aclose(self) -> None:
        await self._channel.close(None)
