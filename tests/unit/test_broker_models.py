"""Node config in the real node-config.json format, pending stops, and the broker's settings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.broker.models import NodeConfig, PendingStop, PendingStops, load_node_file
from services.broker.settings import BrokerSettings
from shared.kv_document import MemoryDocument
from tests.unit.broker_fakes import V6, V8

REAL_FORMAT = json.dumps(
    [
        {
            "id": "node1",
            "host": "inference",
            "inference_port": 5000,
            "poc_port": 8080,
            "max_concurrent": 500,
            "models": {"Qwen/Qwen2.5-7B-Instruct": {"args": ["--quantization", "fp8"]}},
            "hardware": [{"type": "NVIDIA H100 80GB", "count": 1}],
        },
        {
            "id": "node2",
            "host": "10.0.0.2",
            "inference_port": 5000,
            "inference_segment": "/n2",
            "poc_port": 8080,
            "poc_segment": "/n2",
        },
    ]
)


def test_the_real_node_config_format_loads() -> None:
    first, second = load_node_file(REAL_FORMAT)
    assert first.model == ("Qwen/Qwen2.5-7B-Instruct", ("--quantization", "fp8"))
    assert first.endpoint.poc_url(V8) == "http://inference:8080/v3.0.8"
    assert first.endpoint.inference_url(None) == "http://inference:5000"
    assert second.endpoint.poc_url(V8) == "http://10.0.0.2:8080/v3.0.8/n2"
    assert second.model is None and second.max_concurrent == 500


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"host": "a/b"}, "invalid host"),
        ({"poc_segment": "/../x"}, "invalid path segment"),
        ({"inference_port": 0}, "greater than or equal to 1"),
        ({"id": "a b"}, "should match pattern"),
        ({"max_concurrent": 0}, "greater than or equal to 1"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_node_fields_are_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    fields = {"id": "n", "host": "h", "inference_port": 1, "poc_port": 2, **change}
    with pytest.raises(ValidationError, match=message):
        NodeConfig.model_validate(fields)


def test_duplicate_ids_in_the_file_are_refused() -> None:
    one = {"id": "n", "host": "h", "inference_port": 1, "poc_port": 2}
    with pytest.raises(ValueError, match=r"repeated: \['n'\]"):
        load_node_file(json.dumps([one, one]))


def test_pending_stops_accumulate_attempts_and_forget_by_node_or_version() -> None:
    stops = PendingStops()
    stops = stops.add(PendingStop(node_id="a", version=V6, transition_id="t", attempts=1, since=10))
    stops = stops.add(
        PendingStop(node_id="a", version=V6, transition_id="t", attempts=1, since=99, last_error="502")
    )
    (only,) = stops.items
    assert (only.attempts, only.since, only.last_error) == (2, 10, "502")
    stops = stops.add(PendingStop(node_id="b", version=V8, transition_id="t"))
    assert [p.key for p in stops.forget_version(V6).items] == ["b@v3.0.8"]
    assert [p.key for p in stops.forget_node("b").items] == ["a@v3.0.6"]
    assert stops.remove("a", V6).remove("b", V8).items == ()


async def test_memory_doc_counts_only_real_changes() -> None:
    doc = MemoryDocument(1)
    await doc.mutate(lambda v: v)
    await doc.mutate(lambda v: v + 1)
    assert (await doc.load(), doc.writes) == (2, 1)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_NATS__URL", "nats://n1:4222")
    monkeypatch.setenv("BROKER_HANDOFF__STOP_ATTEMPTS", "7")
    monkeypatch.setenv("BROKER_REQUEST_WAIT_S", "45")
    settings = BrokerSettings()
    policies = settings.policies()
    assert settings.nats.url == "nats://n1:4222" and settings.request_wait_s == 45
    assert policies.handoff.stop_attempts == 7 and policies.pending.stop_attempts == 1
    assert policies.heal.health_timeout_s == settings.heal_health_timeout_s


def test_request_wait_must_outlast_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_REQUEST_WAIT_S", "5")
    monkeypatch.setenv("BROKER_HANDOFF__DRAIN_TIMEOUT_S", "10")
    with pytest.raises(ValidationError, match="request_wait_s must exceed"):
        BrokerSettings()
