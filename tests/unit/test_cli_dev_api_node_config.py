"""`dev up`'s node config for an API node: every node reached through the broker's node endpoint."""

from __future__ import annotations

import json
from pathlib import Path

from cli.dev import api_node_configs, node_endpoint, write_api_node_config
from cli.stack import StackInfo
from services.broker.endpoint_paths import parse_endpoint_path
from services.broker.models import load_node_file
from shared.versions import parse_version


def _info(tmp_path: Path) -> StackInfo:
    return StackInfo(
        run_dir=str(tmp_path),
        nats_url="nats://127.0.0.1:4222",
        nats_monitor_url="http://127.0.0.1:8222",
        chain_rpc_url="http://127.0.0.1:26657",
        chain_grpc_address="127.0.0.1:9090",
        registry_url="http://127.0.0.1:8081",
        registry_grpc_address="127.0.0.1:50051",
        chain_watcher_url="http://127.0.0.1:8083",
        broker_url="http://127.0.0.1:18082",
        proxies={"node-1": "http://127.0.0.1:19001", "node-2": "http://127.0.0.1:19002"},
    )


def test_both_ports_of_every_node_are_the_brokers_with_the_node_segment(tmp_path: Path) -> None:
    nodes = api_node_configs(_info(tmp_path), "Qwen/Qwen2.5-7B-Instruct")
    assert [n.id for n in nodes] == ["node-1", "node-2"]
    for n in nodes:
        assert (n.host, n.inference_port, n.poc_port) == ("127.0.0.1", 18082, 18082)
        assert n.inference_segment == n.poc_segment == f"/nodes/{n.id}"
        # The URL the real API node builds for a version lands on this node in the broker.
        call = parse_endpoint_path(n.endpoint.poc_url(None).split(":18082", 1)[1] + "/api/v1/state")
        assert call.node_id == n.id and call.route == "/api/v1/state"
        versioned = n.endpoint.poc_url(parse_version("v3.0.8")).split(":18082", 1)[1]
        assert parse_endpoint_path(versioned + "/api/v1/stop", "POST").node_id == n.id


def test_the_written_file_loads_as_a_node_config(tmp_path: Path) -> None:
    info = _info(tmp_path)
    path = write_api_node_config(info, "Qwen/Qwen2.5-7B-Instruct")
    loaded = load_node_file(path.read_text())
    assert [n.model_dump() for n in loaded] == [
        n.model_dump() for n in api_node_configs(info, "Qwen/Qwen2.5-7B-Instruct")
    ]
    assert json.loads(path.read_text())[0]["models"]  # the model the API node loads is named
    assert node_endpoint(info.broker_url, "node-1") == "http://127.0.0.1:18082/nodes/node-1"
