"""The one reader of CometBFT's `/status`: what a chain node says about its own height.

`sync_info` holds decimal strings (`"latest_block_height": "120"`); every caller (the
chain-watcher, the CLI, the benchmarks, the integration tests) reads them through this parser
instead of indexing the JSON by hand, so a node's odd answer fails the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.timestamps import rfc3339

__all__ = ["ChainStatus", "ChainStatusError", "parse_status", "parse_status_reply"]


class ChainStatusError(ValueError):
    """A `/status` answer without the fields every CometBFT node sends."""


@dataclass(frozen=True, slots=True)
class ChainStatus:
    height: int
    catching_up: bool
    latest_hash: str | None
    earliest_height: int | None = None  # the node's lowest retained block (pruning), when it says
    latest_time: datetime | None = None  # the latest block's time; None when absent or without a zone


def _int_string(raw: Any, what: str) -> int:
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ChainStatusError(f"{what} is {raw!r}, expected a decimal string")


def parse_status(result: Any) -> ChainStatus:
    """The `result` object of a `/status` reply."""
    sync = result.get("sync_info") if isinstance(result, dict) else None
    if not isinstance(sync, dict):
        raise ChainStatusError("no sync_info")
    block_hash = sync.get("latest_block_hash")
    earliest: int | None = None
    if sync.get("earliest_block_height") is not None:
        earliest = _int_string(sync["earliest_block_height"], "sync_info.earliest_block_height") or None
    return ChainStatus(
        height=_int_string(sync.get("latest_block_height"), "sync_info.latest_block_height"),
        catching_up=bool(sync.get("catching_up", False)),
        latest_hash=block_hash if isinstance(block_hash, str) and block_hash else None,
        earliest_height=earliest,
        latest_time=_time(sync.get("latest_block_time")),
    )


def _time(raw: Any) -> datetime | None:
    try:
        return rfc3339(raw)
    except ValueError:
        return None


def parse_status_reply(doc: Any) -> ChainStatus:
    """A whole JSON-RPC `/status` reply (`{"jsonrpc": ..., "result": {...}}`)."""
    if not isinstance(doc, dict):
        raise ChainStatusError("not a JSON-RPC reply")
    return parse_status(doc.get("result"))
