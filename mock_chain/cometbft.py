"""CometBFT JSON-RPC documents in the real shapes (v0.38): status, block, the NewBlock event,
and requests decoded as the real server decodes them.

Pure rendering and parsing. Numbers that are int64 on the wire (heights, voting power) are decimal
strings, hashes are upper-case hex, times are RFC 3339 with nanoseconds, as CometBFT prints them;
clients written against a real node (the gonka dapi reads `data.value.block.header.height` as a
string) therefore parse these unchanged. Requests follow cometbft v0.38.17
rpc/jsonrpc/types/types.go (`RPCRequest.UnmarshalJSON`), server/http_json_handler.go
(`jsonParamsToArgs`), server/http_uri_handler.go (`httpParamsToArgs`) and libs/json (int64 params
must be JSON strings): a request the real node refuses is refused here with the same code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from mock_chain.chain import Block

__all__ = [
    "FUNCS",
    "NEW_BLOCK_EVENT_TYPE",
    "NEW_BLOCK_QUERY",
    "Arg",
    "ArgError",
    "ParseError",
    "RpcFunc",
    "RpcRequest",
    "args_from_json",
    "args_from_uri",
    "block_result",
    "decode_request",
    "decode_requests",
    "is_new_block_query",
    "new_block_event",
    "rfc3339_nano",
    "rpc_error",
    "rpc_result",
    "status_result",
]

NEW_BLOCK_QUERY = "tm.event='NewBlock'"
NEW_BLOCK_EVENT_TYPE = "tendermint/event/NewBlock"
BLOCK_PROTOCOL = "11"
NODE_VERSION = "0.38.17"
_VALIDATOR = hashlib.sha256(b"mock-chain-validator").hexdigest()[:40].upper()

# JSON-RPC 2.0 error codes CometBFT uses.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


def rfc3339_nano(value: datetime) -> str:
    """`2026-11-23T10:00:00.123456Z`: UTC, trailing zeros of the fraction removed, as Go prints it."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def is_new_block_query(query: str) -> bool:
    return "".join(query.split()) == NEW_BLOCK_QUERY


def rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def rpc_error(request_id: Any, code: int, message: str, data: str = "") -> dict[str, Any]:
    """An error response; like `RPCResponse` (`id,omitempty`, `data,omitempty`) a None id and an
    empty data are left out (a parse error has no id; "Method not found" has no data)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    doc: dict[str, Any] = {"jsonrpc": "2.0"}
    if request_id is not None:
        doc["id"] = request_id
    doc["error"] = error
    return doc


def _part_set_hash(block_hash: str) -> str:
    return hashlib.sha256(("parts" + block_hash).encode()).hexdigest().upper()


def _block_id(block_hash: str) -> dict[str, Any]:
    if not block_hash:
        return {"hash": "", "parts": {"total": 0, "hash": ""}}
    return {"hash": block_hash, "parts": {"total": 1, "hash": _part_set_hash(block_hash)}}


def _header(block: Block) -> dict[str, Any]:
    return {
        "version": {"block": BLOCK_PROTOCOL, "app": "0"},
        "chain_id": block.chain_id,
        "height": str(block.height),
        "time": rfc3339_nano(block.time),
        "last_block_id": _block_id(block.last_block_hash),
        "last_commit_hash": hashlib.sha256(("commit" + block.last_block_hash).encode()).hexdigest().upper(),
        "data_hash": hashlib.sha256(b"").hexdigest().upper(),
        "validators_hash": hashlib.sha256(_VALIDATOR.encode()).hexdigest().upper(),
        "next_validators_hash": hashlib.sha256(_VALIDATOR.encode()).hexdigest().upper(),
        "consensus_hash": hashlib.sha256(b"consensus").hexdigest().upper(),
        "app_hash": block.app_hash,
        "last_results_hash": hashlib.sha256(b"results").hexdigest().upper(),
        "evidence_hash": hashlib.sha256(b"").hexdigest().upper(),
        "proposer_address": _VALIDATOR,
    }


def _last_commit(block: Block) -> dict[str, Any]:
    if block.height == 1:
        return {"height": "0", "round": 0, "block_id": _block_id(""), "signatures": []}
    return {
        "height": str(block.height - 1),
        "round": 0,
        "block_id": _block_id(block.last_block_hash),
        "signatures": [
            {
                "block_id_flag": 2,
                "validator_address": _VALIDATOR,
                "timestamp": rfc3339_nano(block.time),
                "signature": base64.b64encode(
                    hashlib.sha512(block.last_block_hash.encode()).digest()
                ).decode(),
            }
        ],
    }


def _block(block: Block) -> dict[str, Any]:
    return {
        "header": _header(block),
        "data": {"txs": []},
        "evidence": {"evidence": []},
        "last_commit": _last_commit(block),
    }


def block_result(block: Block) -> dict[str, Any]:
    """The `result` of `/block?height=H`."""
    return {"block_id": _block_id(block.hash), "block": _block(block)}


def status_result(
    latest: Block | None, earliest: Block | None, *, chain_id: str, catching_up: bool = False
) -> dict[str, Any]:
    """The `result` of `/status`: node_info, sync_info (latest height, catching_up), validator_info."""

    def _sync(block: Block | None, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}_block_hash": block.hash if block else "",
            f"{prefix}_app_hash": block.app_hash if block else "",
            f"{prefix}_block_height": str(block.height if block else 0),
            f"{prefix}_block_time": rfc3339_nano(block.time) if block else "1970-01-01T00:00:00Z",
        }

    return {
        "node_info": {
            "protocol_version": {"p2p": "8", "block": BLOCK_PROTOCOL, "app": "0"},
            "id": hashlib.sha256(chain_id.encode()).hexdigest()[:40],
            "listen_addr": "tcp://0.0.0.0:26656",
            "network": chain_id,
            "version": NODE_VERSION,
            "channels": "40202122233038606100",
            "moniker": "mock-chain",
            "other": {"tx_index": "on", "rpc_address": "tcp://0.0.0.0:26657"},
        },
        "sync_info": {**_sync(latest, "latest"), **_sync(earliest, "earliest"), "catching_up": catching_up},
        "validator_info": {
            "address": _VALIDATOR,
            "pub_key": {
                "type": "tendermint/PubKeyEd25519",
                "value": base64.b64encode(hashlib.sha256(b"pub").digest()).decode(),
            },
            "voting_power": "10",
        },
    }


def new_block_event(block: Block, subscription_id: Any, query: str = NEW_BLOCK_QUERY) -> dict[str, Any]:
    """The message a `subscribe` to `tm.event='NewBlock'` receives for `block`."""
    return rpc_result(
        subscription_id,
        {
            "query": query,
            "data": {
                "type": NEW_BLOCK_EVENT_TYPE,
                "value": {
                    "block": _block(block),
                    "block_id": _block_id(block.hash),
                    "result_finalize_block": {
                        "events": [],
                        "tx_results": [],
                        "validator_updates": [],
                        "consensus_param_updates": None,
                        "app_hash": base64.b64encode(bytes.fromhex(block.app_hash)).decode(),
                    },
                },
            },
            "events": {"tm.event": ["NewBlock"]},
        },
    )


# -- requests, decoded as CometBFT v0.38 decodes them --------------------------------------------


class ParseError(ValueError):
    """The body is neither a request nor a batch: -32700, no id (HTTP 500 over `POST /`)."""


class ArgError(ValueError):
    """A param that does not convert to the function's argument type."""


class Arg(Enum):
    """The Go types of the arguments our functions take; each converts its own way."""

    HEIGHT = "*int64"  # optional: absent or null is nil (the latest height)
    INT64 = "int64"
    STRING = "string"
    HEX_BYTES = "bytes.HexBytes"
    BOOL = "bool"


_ZERO: dict[Arg, Any] = {Arg.HEIGHT: None, Arg.INT64: 0, Arg.STRING: "", Arg.HEX_BYTES: b"", Arg.BOOL: False}


@dataclass(frozen=True, slots=True)
class RpcFunc:
    """One route of rpc/core/routes.go: its argument names and types, as `NewRPCFunc` declares."""

    args: tuple[tuple[str, Arg], ...] = ()
    ws_only: bool = False  # `NewWSRPCFunc`: refused over HTTP
    # `rpc.Cacheable(names...)`: answered with Cache-Control unless one of these is left unset.
    cacheable_unless_unset: tuple[str, ...] | None = None

    def cacheable(self, args: Mapping[str, Any]) -> bool:
        if self.cacheable_unless_unset is None:
            return False
        return all(args.get(name) not in (None, 0, "", b"") for name in self.cacheable_unless_unset)


FUNCS: dict[str, RpcFunc] = {
    "subscribe": RpcFunc((("query", Arg.STRING),), ws_only=True),
    "unsubscribe": RpcFunc((("query", Arg.STRING),), ws_only=True),
    "unsubscribe_all": RpcFunc(ws_only=True),
    "health": RpcFunc(),
    "status": RpcFunc(),
    "block": RpcFunc((("height", Arg.HEIGHT),), cacheable_unless_unset=("height",)),
    "abci_query": RpcFunc(
        (("path", Arg.STRING), ("data", Arg.HEX_BYTES), ("height", Arg.INT64), ("prove", Arg.BOOL))
    ),
}


@dataclass(frozen=True, slots=True)
class RpcRequest:
    id: str | int | None  # None: a notification, which is never answered
    method: str = ""
    params: Any = None
    has_params: bool = False  # the "params" member is there (even as null)


def _json_kind(value: Any) -> str:
    """The JSON kind in Go's words, for its `cannot unmarshal X into ...` messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _loads(text: str | bytes) -> Any:
    """JSON as Go reads it: no NaN or Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def _request(item: Any) -> RpcRequest:
    """One element as `RPCRequest.UnmarshalJSON` takes it: null or no id is a notification."""
    if item is None:
        return RpcRequest(id=None)
    if not isinstance(item, dict):
        raise ParseError(f"json: cannot unmarshal {_json_kind(item)} into Go value of type types.RPCRequest")
    for member in ("jsonrpc", "method"):
        value = item.get(member)
        if value is not None and not isinstance(value, str):
            raise ParseError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field .{member} of type string"
            )
    raw_id = item.get("id")
    if raw_id is None:
        return RpcRequest(id=None)
    request_id: str | int
    if isinstance(raw_id, str):
        request_id = raw_id
    elif isinstance(raw_id, int | float) and not isinstance(raw_id, bool) and math.isfinite(raw_id):
        request_id = int(raw_id)  # float64 in Go, truncated to an int
    else:
        raise ParseError(f"json-rpc ID ({json.dumps(raw_id)}) is of unknown type ({_json_kind(raw_id)})")
    return RpcRequest(
        id=request_id, method=item.get("method") or "", params=item.get("params"), has_params="params" in item
    )


def decode_requests(body: bytes) -> list[RpcRequest]:
    """The requests of a `POST /` body: a batch (array) or one request; `ParseError` otherwise.

    As the real handler: an array whose elements are not all requests is not a batch, and then
    not a request either; `null` and `[]` decode to no requests at all.
    """
    try:
        doc = _loads(body)
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"error unmarshaling request: {exc}") from None
    if doc is None:
        return []
    if isinstance(doc, list):
        try:
            return [_request(item) for item in doc]
        except ParseError:
            raise ParseError(
                "error unmarshaling request: json: cannot unmarshal array into Go value of type "
                "types.RPCRequest"
            ) from None
    try:
        return [_request(doc)]
    except ParseError as exc:
        raise ParseError(f"error unmarshaling request: {exc}") from None


def decode_request(text: str) -> RpcRequest:
    """One websocket frame: a single request (the websocket reads no batches)."""
    try:
        return _request(_loads(text))
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"error unmarshaling request: {exc}") from None


_JSON_INT = re.compile(r"\s*-?(?:0|[1-9][0-9]*)\s*")
_URI_INT = re.compile(r"-?[0-9]+")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_JSON_STARTS = frozenset('"{[-0123456789tfn \t\r\n')
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _int64(text: str) -> int:
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ArgError(f'strconv.ParseInt: parsing "{text.strip()}": value out of range')
    return value


def _hex(text: str) -> bytes:
    if len(text) % 2:
        raise ArgError("encoding/hex: odd length hex string")
    if not _HEX.fullmatch(text):
        bad = next(c for c in text if c not in "0123456789abcdefABCDEF")
        raise ArgError(f"encoding/hex: invalid byte: U+{ord(bad):04X} {bad!r}")
    return bytes.fromhex(text)


def _from_json(kind: Arg, value: Any) -> Any:
    """One param from a JSON-RPC body, as libs/json decodes it into the Go type."""
    if value is None:
        return _ZERO[kind]
    if kind in (Arg.HEIGHT, Arg.INT64):
        if not isinstance(value, str):
            raise ArgError(f'invalid 64-bit integer encoding "{json.dumps(value)}", expected string')
        if not _JSON_INT.fullmatch(value):
            raise ArgError(f"json: cannot unmarshal {json.dumps(value)} into Go value of type int64")
        return _int64(value)
    if kind is Arg.HEX_BYTES:
        if not isinstance(value, str):
            raise ArgError(f"invalid hex string: {json.dumps(value)}")
        return _hex(value)
    wanted = str if kind is Arg.STRING else bool
    if not isinstance(value, wanted):
        raise ArgError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type {kind.value}")
    return value


def args_from_json(func: RpcFunc, params: Any) -> dict[str, Any]:
    """The arguments from JSON-RPC `params`: an object by name or an array of exactly all of them."""
    if params is None or isinstance(params, dict):
        given = params or {}
        return {name: _from_json(kind, given.get(name)) for name, kind in func.args}
    if isinstance(params, list):
        if len(params) != len(func.args):
            names = " ".join(name for name, _ in func.args)
            raise ArgError(f"expected {len(func.args)} parameters ([{names}]), got {len(params)} ({params})")
        return {name: _from_json(kind, value) for (name, kind), value in zip(func.args, params, strict=True)}
    raise ArgError(
        f"unknown type for JSON params: json: cannot unmarshal {_json_kind(params)} into Go value of "
        "type []json.RawMessage. Expected map or array"
    )


def _from_uri(kind: Arg, text: str) -> Any:
    """One query-string param, as `httpParamsToArgs` converts it.

    Integers may be bare; `0x...` is hex for strings and bytes only; anything else must be JSON,
    so a string path is `path="/a/b"` (bare `/a/b` is refused) and bytes are `0x...` or `"raw"`.
    """
    if kind in (Arg.HEIGHT, Arg.INT64) and _URI_INT.fullmatch(text):
        return _int64(text)
    if text.lower().startswith("0x"):
        if kind not in (Arg.STRING, Arg.HEX_BYTES):
            raise ArgError("got a hex string arg, but expected 'int64'")
        raw = _hex(text[2:])
        return raw.decode("utf-8", errors="replace") if kind is Arg.STRING else raw
    if kind is Arg.HEX_BYTES and text != "null":
        if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
            try:
                value = _loads(text)
            except ValueError as exc:
                raise ArgError(str(exc)) from None
            return str(value).encode()
        raise ArgError(f"invalid hex string: {text}")
    try:
        value = _loads(text)
    except ValueError as exc:
        if text[0] not in _JSON_STARTS:
            raise ArgError(f"invalid character {text[0]!r} looking for beginning of value") from None
        raise ArgError(str(exc)) from None
    return _from_json(kind, value)


def args_from_uri(func: RpcFunc, query: Mapping[str, str]) -> dict[str, Any]:
    """The arguments of a URI request (`GET /block?height=5`); a missing or empty param is unset."""
    return {
        name: _from_uri(kind, query[name]) if query.get(name) else _ZERO[kind] for name, kind in func.args
    }
