"""The node endpoint's paths: the version a client sends, the route, and what kind of call it is."""

from __future__ import annotations

import pytest

from services.broker.endpoint_paths import CallKind, EndpointPathError, parse_endpoint_path
from shared.versions import MLNodeVersion

V6, V8 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8")


@pytest.mark.parametrize(
    ("path", "method", "route", "kind", "sent"),
    [
        ("/nodes/n1/api/v1/state", "GET", "/api/v1/state", CallKind.QUERY, None),
        ("/nodes/n1/v3.0.8/api/v1/state", "GET", "/api/v1/state", CallKind.QUERY, V8),
        ("/v3.0.6/nodes/n1/api/v1/stop", "POST", "/api/v1/stop", CallKind.MANAGEMENT, V6),  # the real rule
        ("/nodes/n1/api/v1/inference/up", "POST", "/api/v1/inference/up", CallKind.MANAGEMENT, None),
        (
            "/nodes/n1/api/v1/pow/init/generate",
            "POST",
            "/api/v1/pow/init/generate",
            CallKind.MANAGEMENT,
            None,
        ),
        ("/nodes/n1/api/v1/pow/validate", "POST", "/api/v1/pow/validate", CallKind.QUERY, None),
        ("/nodes/n1/api/v1/pow/status", "GET", "/api/v1/pow/status", CallKind.QUERY, None),
        ("/nodes/n1/api/v1/models/list", "GET", "/api/v1/models/list", CallKind.QUERY, None),
        ("/nodes/n1/v1/chat/completions", "POST", "/v1/chat/completions", CallKind.INFERENCE, None),
        ("/nodes/n1/v3.0.8/tokenize", "POST", "/tokenize", CallKind.INFERENCE, V8),
        ("/nodes/n1/health", "GET", "/health", CallKind.INFERENCE, None),
    ],
)
def test_paths(path: str, method: str, route: str, kind: CallKind, sent: MLNodeVersion | None) -> None:
    call = parse_endpoint_path(path, method)
    assert (call.node_id, call.route, call.kind, call.sent_version) == ("n1", route, kind, sent)


def test_the_registry_wins_over_the_version_a_client_sends() -> None:
    early = parse_endpoint_path("/nodes/n1/v3.0.8/api/v1/state")
    assert early.disagrees_with(V6) and not early.disagrees_with(V8)
    assert not parse_endpoint_path("/nodes/n1/api/v1/state").disagrees_with(V6)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/v1/state", "expected /nodes"),
        ("/nodes/n1", "no MLNode route"),
        ("/nodes/n1/v3.0.8", "no MLNode route"),
        ("/v3.0.6/nodes/n1/v3.0.8/api/v1/state", "two different versions"),
        ("/nodes/n1/api/../../admin", "relative segments"),
    ],
)
def test_paths_refused(path: str, reason: str) -> None:
    with pytest.raises(EndpointPathError, match=reason):
        parse_endpoint_path(path)
