"""CometBFT JSON-RPC documents in the real shapes (v0.38): status, block, the NewBlock event.

Pure rendering. Numbers that are int64 on the wire (heights, voting power) are decimal strings,
hashes are upper-case hex, times are RFC 3339 with nanoseconds, as CometBFT prints them; clients
written against a real node (the gonka dapi reads `data.value.block.header.height` as a string)
therefore parse these unchanged.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from mock_chain.chain import Block

__all__ = [
    "NEW_BLOCK_EVENT_TYPE",
    "NEW_BLOCK_QUERY",
    "block_result",
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
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message, "data": data}}


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
