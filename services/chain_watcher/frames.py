"""Websocket frames from a CometBFT node, parsed without I/O.

A frame is a JSON-RPC 2.0 message: the reply to our `subscribe` (an empty `result`), an error, or
an event. A NewBlock event has `result.data.type == "tendermint/event/NewBlock"`, the height as a
decimal string at `result.data.value.block.header.height` and the hash at
`result.data.value.block_id.hash`. Anything else is `MalformedFrame`, which the caller logs and
skips: one garbled frame must not end the subscription.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from services.chain_watcher.core import ObservedBlock
from shared.events import MAX_HEIGHT
from shared.timestamps import parse_rfc3339

__all__ = [
    "NEW_BLOCK_EVENT_TYPE",
    "NEW_BLOCK_QUERY",
    "IgnoredEvent",
    "MalformedFrame",
    "RpcReply",
    "parse_frame",
    "subscribe_request",
]

NEW_BLOCK_QUERY = "tm.event='NewBlock'"
NEW_BLOCK_EVENT_TYPE = "tendermint/event/NewBlock"
_HASH = re.compile(r"^[0-9A-Fa-f]{64}$")


class MalformedFrame(ValueError):
    """A frame that is not a JSON-RPC message we understand; the message says why."""


@dataclass(frozen=True, slots=True)
class RpcReply:
    """A reply to one of our requests (the subscribe ack has no error and an empty result)."""

    id: Any
    error: str | None = None


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """An event of another type (we subscribe only to NewBlock, so this is unexpected but harmless)."""

    type: str


def subscribe_request(request_id: str = "1") -> str:
    """The subscription the gonka dapi sends, with the query as a positional parameter."""
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscribe", "id": request_id, "params": [NEW_BLOCK_QUERY]}
    )


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            raise MalformedFrame(f"missing {'.'.join(path)}")
        doc = doc[key]
    return doc


def _height(raw: Any) -> int:
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        height = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        height = raw
    else:
        raise MalformedFrame(f"block height {raw!r} is not a decimal string")
    if not 0 < height <= MAX_HEIGHT:
        raise MalformedFrame(f"block height {height} is out of range")
    return height


def parse_frame(data: str | bytes) -> ObservedBlock | RpcReply | IgnoredEvent:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedFrame("not a JSON-RPC message (expected an object)")
    if doc.get("error") is not None:
        err = doc["error"]
        if isinstance(err, dict):
            detail = f"{err.get('message', '')} {err.get('data', '')}".strip() or json.dumps(err)
        else:
            detail = str(err)
        return RpcReply(id=doc.get("id"), error=detail)
    if "result" not in doc or not isinstance(doc["result"], dict):
        raise MalformedFrame("a JSON-RPC message without a result object")
    data_doc = doc["result"].get("data")
    if not data_doc or not isinstance(data_doc, dict) or not data_doc.get("type"):
        return RpcReply(id=doc.get("id"))  # the subscribe acknowledgement
    event_type = data_doc["type"]
    if event_type != NEW_BLOCK_EVENT_TYPE:
        return IgnoredEvent(type=str(event_type))
    height = _height(_get(data_doc, "value", "block", "header", "height"))
    block_hash = (
        data_doc["value"].get("block_id", {}).get("hash") if isinstance(data_doc["value"], dict) else None
    )
    time = parse_rfc3339(data_doc["value"]["block"]["header"].get("time"))
    return ObservedBlock(
        height=height,
        hash=block_hash if isinstance(block_hash, str) and _HASH.fullmatch(block_hash) else None,
        time=time,
    )
