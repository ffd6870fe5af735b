"""What a call to the node endpoint `/nodes/{node_id}/...` means, decided without I/O.

The API node's node config names the broker as both of a node's ports, with the segment
`/nodes/{node_id}`, so its client sends `/nodes/{id}/api/v1/state`, `/nodes/{id}/v1/chat/completions`
and, once it knows a version, `/nodes/{id}/{version}/api/v1/state` (the real rule puts the version
right after the port, before the segment: `/{version}/nodes/{id}/...` — both orders are accepted).
The version a client sends is only its opinion: the call goes to the version the registry made
current, and a difference is reported so it can be logged and counted (the original API node
switches a block early).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.versions import InvalidVersionError, MLNodeVersion, parse_version

__all__ = ["CallKind", "EndpointCall", "EndpointPathError", "node_segment", "parse_endpoint_path"]

NODES_SEGMENT = "nodes"


def node_segment(node_id: str) -> str:
    """The segment an API node's node config names for a node reached through the broker."""
    return f"/{NODES_SEGMENT}/{node_id}"


class EndpointPathError(ValueError):
    """A path the node endpoint does not serve; the message says why."""


class CallKind(enum.StrEnum):
    """Which of the node's two URLs a call goes to, and how the broker treats it."""

    INFERENCE = "inference"  # the inference port: vLLM's routes through the MLNode's proxy
    MANAGEMENT = "management"  # changes what the node runs: serialised with the broker's handoffs
    QUERY = "query"  # reads the node (state, status, health, GPU, models): never waits for a turn


# Management calls that change what the node runs (the first path segments after /api/v1).
_CHANGING = frozenset(
    {
        ("stop",),
        ("inference", "up"),
        ("inference", "up", "async"),
        ("inference", "down"),
        ("pow", "init"),
        ("pow", "init", "generate"),
        ("pow", "init", "validate"),
        ("pow", "phase", "generate"),
        ("pow", "phase", "validate"),
        ("pow", "stop"),
        ("train", "start"),
        ("train", "stop"),
    }
)


@dataclass(frozen=True, slots=True)
class EndpointCall:
    node_id: str
    route: str  # what the MLNode sees under its URL, starting with '/'
    kind: CallKind
    sent_version: MLNodeVersion | None = None  # the version prefix the client used, if any

    def disagrees_with(self, current: MLNodeVersion | None) -> bool:
        return self.sent_version is not None and current is not None and self.sent_version != current


def _version(segment: str) -> MLNodeVersion | None:
    try:
        return parse_version(segment)
    except InvalidVersionError:
        return None


def _kind(route_parts: list[str], method: str) -> CallKind:
    if route_parts[:1] == ["v1"] or route_parts in (["tokenize"], ["health"]):
        return CallKind.INFERENCE
    if route_parts[:2] == ["api", "v1"] and method != "GET" and tuple(route_parts[2:]) in _CHANGING:
        return CallKind.MANAGEMENT
    return CallKind.QUERY


def parse_endpoint_path(path: str, method: str = "GET") -> EndpointCall:
    """`path` as received (starting with '/'), e.g. `/nodes/node-1/v3.0.8/api/v1/state`."""
    parts = [p for p in path.split("/") if p]
    sent: MLNodeVersion | None = None
    if parts and (version := _version(parts[0])) is not None:  # /{version}/nodes/{id}/...
        sent, parts = version, parts[1:]
    if len(parts) < 2 or parts[0] != NODES_SEGMENT:
        raise EndpointPathError(f"expected /nodes/{{node_id}}/..., got {path!r}")
    node_id, rest = parts[1], parts[2:]
    if rest and (version := _version(rest[0])) is not None:  # /nodes/{id}/{version}/...
        if sent is not None and version != sent:
            raise EndpointPathError(f"two different versions in {path!r}")
        sent, rest = version, rest[1:]
    if not rest:
        raise EndpointPathError(f"no MLNode route in {path!r}")
    if any(p in (".", "..") for p in rest):
        raise EndpointPathError(f"relative segments are not allowed: {path!r}")
    return EndpointCall(
        node_id=node_id, route="/" + "/".join(rest), kind=_kind(rest, method.upper()), sent_version=sent
    )
