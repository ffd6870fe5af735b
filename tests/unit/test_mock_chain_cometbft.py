"""The CometBFT documents the mock renders have the real shapes and encodings."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from mock_chain.chain import Chain
from mock_chain.cometbft import (
    FUNCS,
    ArgError,
    ParseError,
    args_from_json,
    args_from_uri,
    block_result,
    decode_requests,
    is_new_block_query,
    new_block_event,
    rfc3339_nano,
    rpc_error,
    status_result,
)


def _chain(blocks: int) -> Chain:
    chain = Chain()
    for i in range(blocks):
        chain.advance(datetime(2026, 11, 23, 10, 0, i, 120000, tzinfo=UTC))
    return chain


def test_new_block_event_shape() -> None:
    chain = _chain(12)
    event = new_block_event(chain.blocks[12], "1")
    assert event["jsonrpc"] == "2.0" and event["id"] == "1"
    result = event["result"]
    assert result["query"] == "tm.event='NewBlock'"
    assert result["data"]["type"] == "tendermint/event/NewBlock"
    value = result["data"]["value"]
    assert value["block"]["header"]["height"] == "12"  # int64 as a decimal string
    assert value["block_id"]["hash"] == chain.blocks[12].hash
    assert value["block"]["header"]["last_block_id"]["hash"] == chain.blocks[11].hash
    assert value["block"]["last_commit"]["height"] == "11"
    assert set(value["block"]) == {"header", "data", "evidence", "last_commit"}
    assert (
        base64.b64decode(value["result_finalize_block"]["app_hash"]).hex().upper()
        == chain.blocks[12].app_hash
    )
    assert result["events"]["tm.event"] == ["NewBlock"]


def test_block_and_status_results() -> None:
    chain = _chain(3)
    block = block_result(chain.blocks[2])
    assert block["block_id"]["hash"] == chain.blocks[2].hash
    assert block["block"]["header"]["height"] == "2"
    status = status_result(chain.blocks[3], chain.blocks[1], chain_id="gonka-mock-1")
    sync = status["sync_info"]
    assert sync["latest_block_height"] == "3" and sync["earliest_block_height"] == "1"
    assert sync["latest_block_hash"] == chain.blocks[3].hash and sync["catching_up"] is False
    assert status["node_info"]["network"] == "gonka-mock-1"


def test_times_are_rfc3339_utc_without_trailing_zeros() -> None:
    assert rfc3339_nano(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)) == "2026-01-02T03:04:05.12Z"
    assert rfc3339_nano(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_new_block_query_matching_ignores_spaces() -> None:
    assert is_new_block_query("tm.event = 'NewBlock'")
    assert not is_new_block_query("tm.event='NewBlockHeader'")


# -- requests, decoded as cometbft v0.38.17 rpc/jsonrpc decodes them ---------------------------


def test_a_batch_keeps_order_and_notifications_have_no_id() -> None:
    body = (
        b'[{"jsonrpc":"2.0","id":0,"method":"status"},{"method":"status"},null,{"id":"x","method":"block"}]'
    )
    assert [(r.id, r.method) for r in decode_requests(body)] == [
        (0, "status"),
        (None, ""),
        (None, ""),
        ("x", "block"),
    ]
    assert decode_requests(b"[]") == [] and decode_requests(b"null") == []
    # Go reads a JSON number id as float64 and truncates it; `"id": null` is a notification.
    assert decode_requests(b'{"id":7.9,"method":"status"}')[0].id == 7
    assert decode_requests(b'{"id":null,"method":"status"}')[0].id is None
    # The server does not check the "jsonrpc" member.
    assert decode_requests(b'{"id":1,"method":"health"}')[0].method == "health"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"5",
        b'"status"',
        b'{"id":true,"method":"status"}',
        b'{"id":1,"method":5}',
        b'[{"id":1,"method":"status"},5]',
        b'{"id":1,"method":"status","x":NaN}',
    ],
)
def test_what_is_no_request_at_all_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError, match="error unmarshaling request"):
        decode_requests(body)


def test_params_present_even_as_null() -> None:
    request = decode_requests(b'{"id":1,"method":"block","params":null}')[0]
    assert request.has_params and request.params is None
    assert not decode_requests(b'{"id":1,"method":"block"}')[0].has_params


def test_json_params_convert_as_libs_json_does() -> None:
    block, abci = FUNCS["block"], FUNCS["abci_query"]
    assert args_from_json(block, {"height": "5"}) == {"height": 5}
    assert args_from_json(block, ["5"]) == {"height": 5}
    assert args_from_json(block, {}) == {"height": None} == args_from_json(block, {"height": None})
    assert args_from_json(block, None) == {"height": None}
    assert args_from_json(abci, {"path": "/p", "data": "0A0b", "height": "3", "prove": True}) == {
        "path": "/p",
        "data": b"\x0a\x0b",
        "height": 3,
        "prove": True,
    }
    assert args_from_json(abci, {"path": "/p"}) == {"path": "/p", "data": b"", "height": 0, "prove": False}


@pytest.mark.parametrize(
    ("func", "params", "message"),
    [
        ("block", {"height": 5}, 'invalid 64-bit integer encoding "5", expected string'),
        ("block", {"height": "5.0"}, "cannot unmarshal"),
        ("block", {"height": "abc"}, "cannot unmarshal"),
        ("block", {"height": "9223372036854775808"}, "value out of range"),
        ("block", [], r"expected 1 parameters \(\[height\]\), got 0"),
        ("block", "5", "unknown type for JSON params"),
        ("abci_query", {"data": "0x0a"}, "encoding/hex: invalid byte"),
        ("abci_query", {"data": "abc"}, "odd length hex string"),
        ("abci_query", {"data": 10}, "invalid hex string"),
        ("abci_query", {"path": 5}, "into Go value of type string"),
        ("abci_query", {"prove": "true"}, "into Go value of type bool"),
    ],
)
def test_json_params_the_real_node_refuses(func: str, params: Any, message: str) -> None:
    with pytest.raises(ArgError, match=message):
        args_from_json(FUNCS[func], params)


def test_uri_params_convert_as_http_params_to_args_does() -> None:
    block, abci = FUNCS["block"], FUNCS["abci_query"]
    assert args_from_uri(block, {"height": "5"}) == {"height": 5}
    assert args_from_uri(block, {"height": '"5"'}) == {"height": 5}  # JSON, as for POST
    assert args_from_uri(block, {}) == {"height": None} == args_from_uri(block, {"height": ""})
    got = args_from_uri(
        abci, {"path": '"/inference.inference.Query/MLNodeVersion"', "data": "0x0A01", "height": "7"}
    )
    assert got == {
        "path": "/inference.inference.Query/MLNodeVersion",
        "data": b"\x0a\x01",
        "height": 7,
        "prove": False,
    }
    assert args_from_uri(abci, {"path": "0x2f70", "data": '"raw"', "prove": "true"})["path"] == "/p"
    assert args_from_uri(abci, {"data": '"raw"'})["data"] == b"raw"


@pytest.mark.parametrize(
    ("func", "query", "message"),
    [
        ("block", {"height": "abc"}, "invalid character 'a' looking for beginning of value"),
        ("block", {"height": "0x10"}, "got a hex string arg, but expected 'int64'"),
        ("abci_query", {"path": "/a/b"}, "invalid character '/' looking for beginning of value"),
        ("abci_query", {"data": "0a0b"}, "invalid hex string: 0a0b"),
        ("abci_query", {"data": "0xzz"}, "encoding/hex: invalid byte"),
        ("abci_query", {"prove": "1"}, "into Go value of type bool"),
    ],
)
def test_uri_params_the_real_node_refuses(func: str, query: dict[str, str], message: str) -> None:
    with pytest.raises(ArgError, match=message):
        args_from_uri(FUNCS[func], query)


def test_only_block_with_a_height_is_cacheable() -> None:
    assert FUNCS["block"].cacheable({"height": 5})
    assert not FUNCS["block"].cacheable({"height": None}) and not FUNCS["block"].cacheable({})
    assert not FUNCS["status"].cacheable({}) and not FUNCS["abci_query"].cacheable({"height": 5})
    assert FUNCS["subscribe"].ws_only and not FUNCS["abci_query"].ws_only


def test_error_responses_leave_out_an_empty_data_and_a_missing_id() -> None:
    assert rpc_error(None, -32700, "Parse error. Invalid JSON", "x") == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error. Invalid JSON", "data": "x"},
    }
    assert rpc_error(0, -32601, "Method not found") == {
        "jsonrpc": "2.0",
        "id": 0,
        "error": {"code": -32601, "message": "Method not found"},
    }
