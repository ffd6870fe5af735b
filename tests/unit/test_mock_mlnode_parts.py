"""Routing, faults, request log, settings and the GPU file lock of the mock MLNode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mock_mlnode.completions import ChatRequest, Generation, chat_completion, sse_chunks, tokenize
from mock_mlnode.faults import FaultAction, FaultBook, FaultRule
from mock_mlnode.gpu_lock import FileGpuLock, lock_path_for
from mock_mlnode.request_log import RequestLog
from mock_mlnode.routing import Target, resolve
from mock_mlnode.settings import MockMLNodeSettings

VERSIONS = {"v3.0.6", "v3.0.8"}
NODES = {"node-0", "node-1"}


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/api/v1/state", Target("v3.0.6", "node-0", "/api/v1/state")),
        ("/v3.0.8/api/v1/state", Target("v3.0.8", "node-0", "/api/v1/state")),
        ("/v3.0.8/node-1/api/v1/state", Target("v3.0.8", "node-1", "/api/v1/state")),
        ("/node-1/v1/chat/completions", Target("v3.0.6", "node-1", "/v1/chat/completions")),
        ("/health", Target("v3.0.6", "node-0", "/health")),
        ("/v3.0.8", Target("v3.0.8", "node-0", "/")),
        ("/unknown/api", Target("v3.0.6", "node-0", "/unknown/api")),
    ],
)
def test_resolve(path: str, target: Target) -> None:
    assert resolve(path, VERSIONS, NODES, "v3.0.6", "node-0") == target


@pytest.mark.parametrize("path", ["/v9.9.9/api/v1/state", "/3.0.7/health", "/v3.0.9-rc1/x"])
def test_a_version_this_process_does_not_serve_is_not_answered(path: str) -> None:
    assert resolve(path, VERSIONS, NODES, "v3.0.6", "node-0") is None


def test_fault_rules_count_down_and_match_fields() -> None:
    book = FaultBook()
    book.add(FaultRule(route="/api/v1/stop", version="v3.0.6", times=2, status=503))
    book.add(FaultRule(action=FaultAction.DELAY, latency_s=0.5, times=0))
    other = book.decide("POST", "/api/v1/stop", "v3.0.8", "n")
    assert other.action is None and other.latency_s == 0.5
    first = book.decide("POST", "/api/v1/stop", "v3.0.6", "n")
    assert first.action is FaultAction.FAIL and first.status == 503
    assert book.decide("POST", "/api/v1/stop", "v3.0.6", "n").action is FaultAction.FAIL
    assert book.decide("POST", "/api/v1/stop", "v3.0.6", "n").action is None
    assert [r["action"] for r in book.describe()] == ["delay"]
    book.clear()
    assert book.decide("GET", "/x", "v", "n") == book.decide("GET", "/y", "v", "n")


def test_fault_rule_validation() -> None:
    with pytest.raises(ValidationError):
        FaultRule(status=200)
    with pytest.raises(ValidationError):
        FaultRule.model_validate({"action": "fail", "surprise": 1})


def test_request_log_is_bounded_and_filterable() -> None:
    log = RequestLog(limit=3)
    for i in range(5):
        version = "v3.0.8" if i % 2 else "v3.0.6"
        log.add(ts=i, method="GET", path=f"/p{i}", route="/r", version=version, node="n", status=200)
    assert [r.path for r in log.query()] == ["/p2", "/p3", "/p4"]
    assert [r.path for r in log.query(version="v3.0.8")] == ["/p3"]
    assert [r.path for r in log.query(since=4)] == ["/p4"]


def test_settings_accept_comma_lists_and_refuse_bad_values() -> None:
    s = MockMLNodeSettings(versions="v3.0.6, v3.0.8", nodes="a,b")  # type: ignore[arg-type]
    assert s.versions == ["v3.0.6", "v3.0.8"] and s.default_version == "v3.0.6" and s.nodes == ["a", "b"]
    assert MockMLNodeSettings(fleet_size=3).nodes == ["node-0", "node-1", "node-2"]
    for bad in ({"versions": ["v1.0"]}, {"versions": ["..", "v1.0.0"]}, {"versions": []}):
        with pytest.raises(ValidationError):
            MockMLNodeSettings(**bad)  # type: ignore[arg-type]
    for name in ("api", "v3.0.8", "a/b", ""):
        with pytest.raises(ValidationError):
            MockMLNodeSettings(nodes=[name])


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_MLNODE_VERSIONS", "v3.0.8,v3.0.9")
    monkeypatch.setenv("MOCK_MLNODE_MODEL_LOAD_S", "0.5")
    s = MockMLNodeSettings()
    assert s.versions == ["v3.0.8", "v3.0.9"] and s.model_load_s == 0.5


def test_gpu_file_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    path = lock_path_for(str(tmp_path / "{node}.lock"), "node-7")
    assert path == tmp_path / "node-7.lock"
    a, b = FileGpuLock(path, "node-7@v3.0.6"), FileGpuLock(path, "node-7@v3.0.8")
    assert a.acquire() and a.held
    assert a.acquire()  # re-entrant for its holder
    assert not b.acquire() and not b.held
    assert b.holder() is not None and b.holder().startswith("node-7@v3.0.6 pid=")  # type: ignore[union-attr]
    a.release()
    assert b.holder() is None
    assert b.acquire()
    b.release()


def _plan(**request: Any) -> Generation:
    body = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi there"}], **request})
    return Generation.plan(body, "m", "v3.0.8", "node-1", chunks=5)


def test_completions_name_the_version() -> None:
    body = chat_completion(_plan())
    assert body["choices"][0]["message"]["content"].startswith("[v3.0.8] node-1 model=m")
    assert body["choices"][0]["logprobs"] is None  # not asked for
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    events = list(sse_chunks(_plan(stream=True)))
    assert len(events) == 5 + 3 and events[-1] == b"data: [DONE]\n\n"
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert tokenize("a b", 10) == tokenize("a b", 10)


def test_logprobs_as_the_api_node_asks_for_them() -> None:
    """The real API node always sends logprobs=true and top_logprobs=5."""
    gen = _plan(logprobs=True, top_logprobs=5, seed=7)
    content = chat_completion(gen)["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == list(gen.tokens) and len(content) == 5
    assert all(len(c["top_logprobs"]) == 5 and c["top_logprobs"][0]["token"] == c["token"] for c in content)
    assert all(c["bytes"] == list(c["token"].encode()) and c["logprob"] <= 0 for c in content)
    assert chat_completion(_plan(logprobs=True, top_logprobs=5, seed=7))["choices"][0]["logprobs"] == {
        "content": content
    }  # deterministic: a validator re-running it gets the same numbers


def test_stream_with_include_usage_ends_with_a_usage_chunk() -> None:
    gen = _plan(stream=True, logprobs=True, top_logprobs=5, stream_options={"include_usage": True})
    docs = [json.loads(e[len(b"data: ") :]) for e in list(sse_chunks(gen))[:-1]]
    assert docs[-1]["choices"] == [] and docs[-1]["usage"]["completion_tokens"] == 5
    pieces = [d for d in docs if d["choices"] and d["choices"][0]["delta"].get("content")]
    assert all(len(p["choices"][0]["logprobs"]["content"]) == 1 for p in pieces) and len(pieces) == 5
    assert docs[-2]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_cuts_the_answer() -> None:
    body = chat_completion(_plan(max_tokens=2))
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"
