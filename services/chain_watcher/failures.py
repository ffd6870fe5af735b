"""Which failures the chain-watcher retries, and how it names them on its error counter."""

from __future__ import annotations

import grpc
import nats.errors

from services.chain_watcher.chain_client import ChainError, QueryError
from shared.bus import BusError
from shared.kv_store import StaleRevisionError

__all__ = ["RETRIED", "error_kind"]

# gRPC codes that mean "try again later", as opposed to "this node cannot answer at that height".
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
# Failures a sync round retries (with backoff) rather than dies of.
RETRIED = (ChainError, BusError, StaleRevisionError, nats.errors.Error, OSError, TimeoutError)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, QueryError):
        return "grpc"
    if isinstance(exc, ChainError):
        return "rpc"
    if isinstance(exc, StaleRevisionError):
        return "kv"
    if isinstance(exc, BusError | nats.errors.Error):
        return "nats"
    return "io"
