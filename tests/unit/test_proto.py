"""The generated protobuf code is fresh and speaks the chain's wire format."""

from __future__ import annotations

import pytest

from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.generate import stale_files
from proto.inference.inference import mlnode_version_pb2, partial_upgrade_pb2, query_pb2
from proto.mlnode_upgrade.v1 import registry_pb2


def test_committed_generated_code_is_fresh() -> None:
    assert stale_files() == []


def test_mlnode_version_wire_bytes() -> None:
    # field 1, length-delimited, 6 bytes
    assert mlnode_version_pb2.MLNodeVersion(current_version="v3.0.8").SerializeToString() == b"\n\x06v3.0.8"


def test_partial_upgrade_field_numbers_match_the_chain() -> None:
    plan = partial_upgrade_pb2.PartialUpgrade(
        height=12000, node_version="v3.0.8", api_binaries_json="", name="x"
    )
    # height=1 varint (12000 = e0 5d), node_version=2, api_binaries_json=3 (empty: omitted), name=4
    assert plan.SerializeToString() == b"\x08\xe0\x5d\x12\x06v3.0.8\x22\x01x"


def test_decodes_bytes_a_chain_node_would_send() -> None:
    page = pagination_pb2.PageResponse(next_key=b"\x00\x01", total=3).SerializeToString()
    plan = b"\x08\x64\x12\x06v3.0.9"
    raw = b"\x0a" + bytes([len(plan)]) + plan + b"\x12" + bytes([len(page)]) + page
    resp = query_pb2.QueryAllPartialUpgradeResponse.FromString(raw)
    assert [(p.height, p.node_version) for p in resp.partialUpgrade] == [(100, "v3.0.9")]
    assert resp.pagination.next_key == b"\x00\x01" and resp.pagination.total == 3


def test_page_request_field_numbers() -> None:
    req = query_pb2.QueryAllPartialUpgradeRequest(
        pagination=pagination_pb2.PageRequest(key=b"k", offset=0, limit=2, count_total=True, reverse=False)
    )
    assert req.SerializeToString() == b"\x0a\x07\x0a\x01k\x18\x02\x20\x01"


@pytest.mark.parametrize(
    ("method", "request_type", "response_type"),
    [
        ("PartialUpgrade", "QueryGetPartialUpgradeRequest", "QueryGetPartialUpgradeResponse"),
        ("PartialUpgradeAll", "QueryAllPartialUpgradeRequest", "QueryAllPartialUpgradeResponse"),
        ("MLNodeVersion", "QueryGetMLNodeVersionRequest", "QueryGetMLNodeVersionResponse"),
    ],
)
def test_query_service_full_method_names(method: str, request_type: str, response_type: str) -> None:
    service = query_pb2.DESCRIPTOR.services_by_name["Query"]
    assert service.full_name == "inference.inference.Query"
    rpc = service.methods_by_name[method]
    assert f"/{service.full_name}/{rpc.name}" == f"/inference.inference.Query/{method}"
    assert rpc.input_type.full_name == f"inference.inference.{request_type}"
    assert rpc.output_type.full_name == f"inference.inference.{response_type}"


def test_registry_service_shape() -> None:
    service = registry_pb2.DESCRIPTOR.services_by_name["Registry"]
    assert service.full_name == "mlnode_upgrade.v1.Registry"
    assert not service.methods_by_name["GetState"].server_streaming
    assert service.methods_by_name["WatchState"].server_streaming
    state = registry_pb2.VersionState(current_version="v3.0.8", last_used_version="v3.0.6")
    state.pending.add(height=200, node_version="v3.0.9")
    assert registry_pb2.VersionState.FromString(state.SerializeToString()) == state
