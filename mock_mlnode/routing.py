"""Which instance a path addresses: `/{version}/{node}/rest`, with both prefixes optional.

Behind nginx the version prefix is already stripped, so `/api/v1/state` means the default
version; in fleet mode the node's path segment (the real node config's segment) selects the node.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["RESERVED_SEGMENTS", "Target", "resolve"]

# First segments of MLNode routes: a node may not be named like one, or its paths would be ambiguous.
RESERVED_SEGMENTS = frozenset({"api", "v1", "health", "livez", "readyz", "tokenize", "mock"})


@dataclass(frozen=True)
class Target:
    version: str
    node: str
    route: str  # the path the MLNode API sees, always starting with "/"


def resolve(
    path: str, versions: Collection[str], nodes: Collection[str], default_version: str, default_node: str
) -> Target | None:
    """The instance and route of `path`, or None when a prefix names an unknown version or node.

    A first segment that is neither a served version nor a node is part of the route, so
    `/api/v1/state` works; `/v9.9.9/api/v1/state` for a version this process does not serve
    is None (404), never silently answered by another version.
    """
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    version, node = default_version, default_node
    i = 0
    if i < len(segments) and segments[i] in versions:
        version = segments[i]
        i += 1
    elif i < len(segments) and _looks_like_version(segments[i]):
        return None
    if i < len(segments) and segments[i] in nodes:
        node = segments[i]
        i += 1
    return Target(version, node, "/" + "/".join(segments[i:]))


def _looks_like_version(segment: str) -> bool:
    body = segment[1:] if segment.startswith("v") else segment
    parts = body.split("-", 1)[0].split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
