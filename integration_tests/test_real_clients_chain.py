"""The real chain clients' calls, replayed against the mock chain over real sockets.

`real_clients/cometbft_jsonrpc.json` holds the CometBFT RPC calls (the dapi's through cometbft
rpc/client/http, cosmos-sdk's `abci_query`, curl's URI routes, batches and notifications) with
the answer a real v0.38 node gives: the HTTP status, the headers, which members exist, and the
type each field has on the wire (libs/json's int64-as-string, HexBytes, base64, RFC 3339), i.e.
what the Go structs need to decode it. `real_clients/grpc_calls.json` holds the
`inference.inference.Query` calls (with and without pagination, an offset past the end, the
`x-cosmos-block-height` header) with the status and the fields of the answer. Both are replayed
one call at a time, in order, against a chain built by the fixture's `setup`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from integration_tests.chain_support import ChainControl
from mock_chain.server import MockChainServer
from proto.inference.inference import query_pb2

FIXTURES = Path(__file__).parent / "real_clients"
RPC = json.loads((FIXTURES / "cometbft_jsonrpc.json").read_text())
GRPC = json.loads((FIXTURES / "grpc_calls.json").read_text())
QUERY = query_pb2.DESCRIPTOR.services_by_name["Query"]

_RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
_DECIMAL = re.compile(r"-?\d+")
_HEX = re.compile(r"[0-9A-F]*")


def _is_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


# How each Go type arrives on the wire (see the fixture's "types").
WIRE_TYPES: dict[str, Any] = {
    "int64": lambda v: isinstance(v, str) and _DECIMAL.fullmatch(v) is not None,
    "uint64": lambda v: isinstance(v, str) and v.isascii() and v.isdigit(),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "hex": lambda v: isinstance(v, str) and _HEX.fullmatch(v) is not None and len(v) % 2 == 0,
    "base64": _is_base64,
    "time": lambda v: isinstance(v, str) and _RFC3339_UTC.fullmatch(v) is not None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}

_MISSING = object()


def _at(doc: Any, path: str) -> Any:
    """`a.b.0.c` in a JSON document; `_MISSING` where a member is absent."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return _MISSING
    return doc


def _fill(value: Any, head: int) -> Any:
    return value.replace("$head", str(head)) if isinstance(value, str) else value


def _check_doc(doc: Any, expect: dict[str, Any], head: int, name: str) -> None:
    """One JSON-RPC response object against its expectation."""
    assert isinstance(doc, dict), f"{name}: {doc!r}"
    if "id" in expect:
        assert "id" in doc and doc["id"] == expect["id"] and type(doc["id"]) is type(expect["id"]), name
    for member in expect.get("members", []):
        assert _at(doc, member) is not _MISSING, f"{name}: no {member} in {doc}"
    for member in expect.get("no_members", []):
        assert _at(doc, member) is _MISSING, f"{name}: {member} should be absent from {doc}"
    for path, wire in expect.get("reads", {}).items():
        value = _at(doc, path)
        assert value is not _MISSING, f"{name}: no {path}"
        assert any(WIRE_TYPES[t](value) for t in wire.split("|")), f"{name}: {path}={value!r} is not {wire}"
    for path, want in expect.get("values", {}).items():
        assert _at(doc, path) == _fill(want, head), f"{name}: {path}={_at(doc, path)!r}, expected {want!r}"


async def _send(http: httpx.AsyncClient, spec: dict[str, Any]) -> httpx.Response:
    headers: dict[str, str] = {}
    content: bytes | None = None
    if "json" in spec:
        # What Go's json.Marshal writes: compact, with the Content-Type rpc/jsonrpc/client sets.
        content = json.dumps(spec["json"], separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    elif "body" in spec:
        content = spec["body"].encode()
        headers["Content-Type"] = "application/json"
    return await http.request(
        spec["method"], spec["path"], params=spec.get("query"), content=content, headers=headers
    )


@pytest.fixture
async def head(control: ChainControl) -> int:
    """The chain the JSON-RPC fixture expects: `setup.advance` blocks."""
    return await control.advance(RPC["setup"]["advance"])


@pytest.mark.parametrize("call", RPC["calls"], ids=[c["name"][:60] for c in RPC["calls"]])
async def test_cometbft_jsonrpc_call(control: ChainControl, head: int, call: dict[str, Any]) -> None:
    expect, name = call["expect"], call["name"]
    response = await _send(control.http, call["request"])
    assert response.status_code == expect["status"], f"{name}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("x-server-time", "").isdigit(), f"{name}: no X-Server-Time"
    for header, value in expect.get("headers", {}).items():
        assert response.headers.get(header, "").startswith(value), f"{name}: {header}: {response.headers}"
    for header in expect.get("absent_headers", []):
        assert header not in response.headers, f"{name}: unexpected {header}: {response.headers[header]}"
    body = expect["body"]
    if body == "empty":
        assert response.content == b"", name
        return
    if body == "text":
        if "text" in expect:
            assert response.text == expect["text"], name
        assert expect.get("contains", "") in response.text, name
        return
    doc = response.json()
    if body == "array":
        assert isinstance(doc, list) and len(doc) == expect["length"], f"{name}: {doc!r}"
        for item, each in zip(doc, expect["each"], strict=True):
            _check_doc(item, each, head, name)
        return
    _check_doc(doc, expect, head, name)


def test_the_jsonrpc_fixture_covers_every_kind_of_answer() -> None:
    """The fixture is the contract: keep the cases this module exists for."""
    kinds = {(c["request"]["method"], c["expect"]["status"], c["expect"]["body"]) for c in RPC["calls"]}
    assert {
        ("POST", 200, "object"),
        ("POST", 200, "array"),
        ("POST", 200, "empty"),
        ("POST", 500, "object"),
    } <= kinds
    assert {("GET", 200, "object"), ("GET", 500, "object"), ("GET", 404, "object")} <= kinds
    methods = {
        c["request"].get("json", {}).get("method")
        for c in RPC["calls"]
        if isinstance(c["request"].get("json"), dict)
    }
    assert {"status", "block", "abci_query"} <= methods


# -- gRPC ------------------------------------------------------------------------------------


def _message_class(name: str) -> type[Message]:
    return message_factory.GetMessageClass(query_pb2.DESCRIPTOR.pool.FindMessageTypeByName(name))


def _field(message: Message, path: str) -> Any:
    value: Any = message
    for part in path.split("."):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value.hex() if isinstance(value, bytes) else value


def _has_no_unknown_fields(message: Message) -> bool:
    """Every field on the wire is one the chain's proto declares (recursively)."""
    if len(UnknownFieldSet(message)):
        return False
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        children = value if field.is_repeated else [value]
        if not all(_has_no_unknown_fields(child) for child in children):
            return False
    return True


@pytest.fixture
async def grpc_head(control: ChainControl) -> int:
    setup = GRPC["setup"]
    await control.propose(*[(height, version) for height, version in setup["plans"]])
    return await control.advance(setup["advance"])


@pytest.mark.parametrize("call", GRPC["calls"], ids=[c["name"][:60] for c in GRPC["calls"]])
async def test_grpc_call(chain: MockChainServer, grpc_head: int, call: dict[str, Any]) -> None:
    expect, name = call["expect"], call["name"]
    method = QUERY.methods_by_name[call["method"].rsplit("/", 1)[1]]
    assert call["method"] == f"/{QUERY.full_name}/{method.name}"
    request = json_format.ParseDict(call["request"], _message_class(method.input_type.full_name)())
    metadata = tuple(call.get("metadata", {}).items()) or None
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        rpc = channel.unary_unary(call["method"], request_serializer=None, response_deserializer=None)
        pending = rpc(request.SerializeToString(), metadata=metadata, timeout=5)
        if expect["code"] != "OK":
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pending
            assert refused.value.code().name == expect["code"], f"{name}: {refused.value.code()}"
            details = refused.value.details() or ""
            assert details == expect.get("details", details), f"{name}: {details!r}"
            assert expect.get("details_contains", "") in details, f"{name}: {details!r}"
            return
        raw = await pending
        headers = dict(await pending.initial_metadata())
    response = _message_class(method.output_type.full_name).FromString(raw)
    assert _has_no_unknown_fields(response), name
    for field in expect.get("present", []):
        assert response.HasField(field), f"{name}: no {field}"
    for field, count in expect.get("counts", {}).items():
        assert len(getattr(response, field)) == count, f"{name}: {field} has {len(getattr(response, field))}"
    for path, want in expect.get("values", {}).items():
        assert _field(response, path) == want, f"{name}: {path}={_field(response, path)!r}, expected {want!r}"
    for key, want in expect.get("initial_metadata", {}).items():
        assert headers.get(key) == _fill(want, grpc_head), f"{name}: {key}={headers.get(key)!r}"
