"""Websocket frames: the real NewBlock shapes parse, the subscribe ack is recognised, garbage is refused.

`DOC_EVENT` is written the way the CometBFT RPC documentation presents a NewBlock event (v0.38:
`result_finalize_block`), and `LEGACY_EVENT` the way Tendermint/CometBFT before v0.38 sent it
(`result_begin_block`/`result_end_block`, id "0#event"); neither comes from our mock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.chain_watcher.core import ObservedBlock
from services.chain_watcher.frames import (
    IgnoredEvent,
    MalformedFrame,
    RpcReply,
    parse_frame,
    subscribe_request,
)
from shared.timestamps import parse_rfc3339

BLOCK_HASH = "112BC173FD838FB68EB43476816CD7B4C6661B6884A9E357B417EE957E1CF8F7"
PARTS_HASH = "38D4B26B5B725C4F13571EFE022C030390E4C33C8CF6F88EDD142EA769642DBD"


def _header(height: str) -> dict[str, Any]:
    return {
        "version": {"block": "11", "app": "0"},
        "chain_id": "cosmoshub-2",
        "height": height,
        "time": "2019-04-22T17:01:51.701356223Z",
        "last_block_id": {"hash": PARTS_HASH, "parts": {"total": 1, "hash": PARTS_HASH}},
        "last_commit_hash": "21B9BC845AD2CB2C4193CDD17BFC506F1EBE5A7402E84AD96E64171287A34812",
        "data_hash": "970886F99E77ED0D60DA8FCE0447C2676E59F2F77302B0C4AA10E1D02F18EF73",
        "validators_hash": "D658BFD100CA8025CFD3BECFE86194322731D387286FBD26E059115FD5F2BCA0",
        "next_validators_hash": "D658BFD100CA8025CFD3BECFE86194322731D387286FBD26E059115FD5F2BCA0",
        "consensus_hash": "0F2908883A105C793B74495EB7D6DF2EEA479ED7FC9349206A65CB0F9987A0B8",
        "app_hash": "223BF64D4A01074DC523A80E76B9BBC786C791FB0A1893AC5B14866356FCFD6C",
        "last_results_hash": "",
        "evidence_hash": "",
        "proposer_address": "D540AB022088612AC74B287D076DBFBC4A377A2E",
    }


def _block(height: str) -> dict[str, Any]:
    return {
        "header": _header(height),
        "data": {"txs": ["yQHwYl3uCkKoo2GaChRnd+THLQ2RM87nEZrE19910Z28ABIUWW/t8AtIMwcyU0sT32RcMDI9GF0a"]},
        "evidence": {"evidence": []},
        "last_commit": {
            "height": str(int(height) - 1),
            "round": 0,
            "block_id": {"hash": PARTS_HASH, "parts": {"total": 1, "hash": PARTS_HASH}},
            "signatures": [
                {
                    "block_id_flag": 2,
                    "validator_address": "000001E443FD237E4B616E2FA69DF4EE3D49A94F",
                    "timestamp": "2019-04-22T17:01:58.376629719Z",
                    "signature": (
                        "14jaTQXYRt8kbLKEhdHq7AXycrFImiLuZx50uOjs2+Zv+2i7RTG/jnObD07Jo2ubZ8xd7bNBJMqkgtkd0oQHAw=="
                    ),
                }
            ],
        },
    }


DOC_EVENT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 0,
    "result": {
        "query": "tm.event='NewBlock'",
        "data": {
            "type": "tendermint/event/NewBlock",
            "value": {
                "block": _block("12"),
                "block_id": {"hash": BLOCK_HASH, "parts": {"total": 1, "hash": PARTS_HASH}},
                "result_finalize_block": {
                    "events": [
                        {
                            "type": "coin_spent",
                            "attributes": [{"key": "amount", "value": "1ngonka", "index": True}],
                        }
                    ],
                    "tx_results": [],
                    "validator_updates": [],
                    "consensus_param_updates": {"block": {"max_bytes": "22020096", "max_gas": "-1"}},
                    "app_hash": "Ijv2TUoBB03FI6gOdrm7x4bHkfsaGJOsWxSGY1b8/Ww=",
                },
            },
        },
        "events": {"tm.event": ["NewBlock"], "coin_spent.amount": ["1ngonka"]},
    },
}

LEGACY_EVENT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "0#event",
    "result": {
        "query": "tm.event='NewBlock'",
        "data": {
            "type": "tendermint/event/NewBlock",
            "value": {
                "block": _block("7"),
                "result_begin_block": {"events": []},
                "result_end_block": {"validator_updates": [], "events": []},
            },
        },
        "events": {"tm.event": ["NewBlock"]},
    },
}


def test_documentation_shaped_new_block_event() -> None:
    frame = parse_frame(json.dumps(DOC_EVENT))
    assert frame == ObservedBlock(
        height=12, hash=BLOCK_HASH, time=datetime(2019, 4, 22, 17, 1, 51, 701356, tzinfo=UTC)
    )


def test_legacy_event_without_block_id_still_gives_the_height() -> None:
    assert parse_frame(json.dumps(LEGACY_EVENT).encode()) == ObservedBlock(
        height=7, hash=None, time=datetime(2019, 4, 22, 17, 1, 51, 701356, tzinfo=UTC)
    )


def test_subscribe_ack_and_errors_are_replies() -> None:
    assert parse_frame('{"jsonrpc":"2.0","id":"1","result":{}}') == RpcReply(id="1")
    reply = parse_frame(
        '{"jsonrpc":"2.0","id":"1","error":{"code":-32603,"message":"Internal error",'
        '"data":"already subscribed"}}'
    )
    assert isinstance(reply, RpcReply) and reply.error == "Internal error already subscribed"


def test_other_event_types_are_ignored() -> None:
    other = {"jsonrpc": "2.0", "id": 1, "result": {"query": "q", "data": {"type": "tendermint/event/Tx"}}}
    assert parse_frame(json.dumps(other)) == IgnoredEvent(type="tendermint/event/Tx")


def _with_height(height: Any) -> str:
    doc = json.loads(json.dumps(DOC_EVENT))
    doc["result"]["data"]["value"]["block"]["header"]["height"] = height
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected an object"),
        ('{"jsonrpc":"2.0","id":1}', "without a result"),
        (_with_height("twelve"), "not a decimal string"),
        (_with_height("-3"), "not a decimal string"),
        (_with_height("0"), "out of range"),
        (_with_height(None), "not a decimal string"),
        (
            json.dumps(
                {"jsonrpc": "2.0", "result": {"data": {"type": "tendermint/event/NewBlock", "value": {}}}}
            ),
            "missing",
        ),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(frame: str, reason: str) -> None:
    with pytest.raises(MalformedFrame, match=reason):
        parse_frame(frame)


def test_subscribe_request_is_the_dapi_form() -> None:
    assert json.loads(subscribe_request("1")) == {
        "jsonrpc": "2.0",
        "method": "subscribe",
        "id": "1",
        "params": ["tm.event='NewBlock'"],
    }


def test_rfc3339_with_nanoseconds() -> None:
    assert parse_rfc3339("2026-11-23T10:00:00.123456789Z") == datetime(
        2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_rfc3339("2026-11-23T10:00:00Z") == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert parse_rfc3339("yesterday") is None and parse_rfc3339(None) is None
