"""`inference.inference.Query`'s answers from a state snapshot, whatever carries the request.

A real node serves the same keeper methods over gRPC (port 9090) and over CometBFT's
`abci_query` (the path `/inference.inference.Query/<Method>` with the protobuf request), which is
how a Cosmos client built on the RPC endpoint alone asks. Both transports here call these
functions, so the two can never answer differently; a refusal is a `QueryError` with the gRPC
code the keeper returns, which each transport maps as the real one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message

from mock_chain.chain import PartialUpgrade, StateSnapshot
from mock_chain.pagination import PaginationError, paginate, uint64_key
from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.inference.inference import mlnode_version_pb2, partial_upgrade_pb2, query_pb2

__all__ = ["METHODS", "Method", "QueryError", "ml_node_version", "partial_upgrade", "partial_upgrade_all"]


class QueryError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def _to_pb(plan: PartialUpgrade) -> partial_upgrade_pb2.PartialUpgrade:
    return partial_upgrade_pb2.PartialUpgrade(
        height=plan.height,
        node_version=plan.node_version,
        api_binaries_json=plan.api_binaries_json,
        name=plan.name,
    )


def partial_upgrade(
    state: StateSnapshot, request: query_pb2.QueryGetPartialUpgradeRequest
) -> query_pb2.QueryGetPartialUpgradeResponse:
    for plan in state.partial_upgrades:
        if plan.height == request.height:
            return query_pb2.QueryGetPartialUpgradeResponse(partialUpgrade=_to_pb(plan))
    raise QueryError(grpc.StatusCode.NOT_FOUND, "not found")


def partial_upgrade_all(
    state: StateSnapshot, request: query_pb2.QueryAllPartialUpgradeRequest
) -> query_pb2.QueryAllPartialUpgradeResponse:
    page_request = request.pagination
    try:
        page = paginate(
            [(uint64_key(p.height), p) for p in state.partial_upgrades],
            key=page_request.key,
            offset=page_request.offset,
            limit=page_request.limit,
            count_total=page_request.count_total,
            reverse=page_request.reverse,
        )
    except PaginationError as exc:
        raise QueryError(grpc.StatusCode.INTERNAL, str(exc)) from None
    # CollectionPaginate always returns a PageResponse (empty past the end), and gogoproto
    # writes a non-nil message field even when it is empty: `pagination` is always present.
    return query_pb2.QueryAllPartialUpgradeResponse(
        partialUpgrade=[_to_pb(p) for p in page.items],
        pagination=pagination_pb2.PageResponse(next_key=page.next_key, total=page.total),
    )


def ml_node_version(
    state: StateSnapshot, request: query_pb2.QueryGetMLNodeVersionRequest
) -> query_pb2.QueryGetMLNodeVersionResponse:
    return query_pb2.QueryGetMLNodeVersionResponse(
        mlnode_version=mlnode_version_pb2.MLNodeVersion(current_version=state.mlnode_version)
    )


@dataclass(frozen=True, slots=True)
class Method:
    """One query method: how its request decodes and what answers it."""

    name: str
    decode: Callable[[bytes], Message]
    answer: Callable[[StateSnapshot, Message], Message]

    def call(self, state: StateSnapshot, data: bytes) -> bytes:
        try:
            request = self.decode(data)
        except DecodeError as exc:
            raise QueryError(
                grpc.StatusCode.INVALID_ARGUMENT, f"failed to decode the request: {exc}"
            ) from None
        return self.answer(state, request).SerializeToString()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("PartialUpgrade", query_pb2.QueryGetPartialUpgradeRequest.FromString, partial_upgrade),  # type: ignore[arg-type]
        Method("PartialUpgradeAll", query_pb2.QueryAllPartialUpgradeRequest.FromString, partial_upgrade_all),  # type: ignore[arg-type]
        Method("MLNodeVersion", query_pb2.QueryGetMLNodeVersionRequest.FromString, ml_node_version),  # type: ignore[arg-type]
    )
}
