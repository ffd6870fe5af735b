"""The broker's data: nodes as the real node-config describes them, and what it persists about stops.

Field names follow the real `node-config.json` (`inference_port`, `poc_segment`, `max_concurrent`,
`models` with their `args`), so an operator's existing file loads as it is.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.events import NodeId
from shared.versions import InvalidEndpointError, MLNodeVersion, NodeEndpoint

__all__ = [
    "Hardware",
    "ModelConfig",
    "NodeConfig",
    "NodeSet",
    "PendingStop",
    "PendingStops",
    "load_node_file",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Model):
    """How to start one model: the extra vLLM arguments passed to `inference/up`."""

    args: tuple[str, ...] = ()


class Hardware(_Model):
    type: Annotated[str, Field(min_length=1, max_length=256)]
    count: Annotated[int, Field(ge=0)] = 1


@lru_cache(maxsize=16_384)
def _endpoint(
    host: str,
    inference_port: int,
    poc_port: int,
    inference_segment: str,
    poc_segment: str,
    base_url: str | None,
) -> NodeEndpoint:
    """Built and validated once per address: every MLNode call asks for its node's endpoint."""
    return NodeEndpoint(host, inference_port, poc_port, inference_segment, poc_segment, base_url)


class NodeConfig(_Model):
    """One MLNode; the URLs of each version are built from these fields at the moment of use."""

    id: NodeId
    host: str
    inference_port: Annotated[int, Field(ge=1, le=65535)]
    inference_segment: str = ""
    poc_port: Annotated[int, Field(ge=1, le=65535)]
    poc_segment: str = ""
    base_url: str | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    max_concurrent: Annotated[int, Field(ge=1, le=1_000_000)] = 500
    hardware: tuple[Hardware, ...] = ()

    @model_validator(mode="after")
    def _valid_endpoint(self) -> NodeConfig:
        try:
            self.endpoint.inference_url(None)
            self.endpoint.poc_url(None)
        except InvalidEndpointError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def endpoint(self) -> NodeEndpoint:
        return _endpoint(
            self.host,
            self.inference_port,
            self.poc_port,
            self.inference_segment,
            self.poc_segment,
            self.base_url,
        )

    @property
    def model(self) -> tuple[str, tuple[str, ...]] | None:
        """The model `inference/up` loads: the first one configured (the real dapi's epoch model)."""
        for name, config in self.models.items():
            return name, config.args
        return None


class NodeSet(_Model):
    """Every node, persisted as one document. `seeded` says the config file was loaded once."""

    seeded: bool = False
    nodes: tuple[NodeConfig, ...] = ()

    def get(self, node_id: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def with_node(self, node: NodeConfig) -> NodeSet:
        """Add or replace `node`, keeping the order of the others."""
        if self.get(node.id) is None:
            return self.model_copy(update={"nodes": (*self.nodes, node)})
        return self.model_copy(update={"nodes": tuple(node if n.id == node.id else n for n in self.nodes)})

    def without(self, node_id: str) -> NodeSet:
        return self.model_copy(update={"nodes": tuple(n for n in self.nodes if n.id != node_id)})


class PendingStop(_Model):
    """A stop that was not confirmed: retried until the version reports STOPPED or the node goes."""

    node_id: NodeId
    version: MLNodeVersion
    transition_id: str
    attempts: int = 0
    last_error: Annotated[str, Field(max_length=2048)] = ""
    since: float = 0.0  # wall-clock time it became pending

    @property
    def key(self) -> str:
        return f"{self.node_id}@{self.version}"


class PendingStops(_Model):
    items: tuple[PendingStop, ...] = ()

    def add(self, stop: PendingStop) -> PendingStops:
        """Add or refresh; an existing entry keeps its `since` and attempt count."""
        old = next((p for p in self.items if p.key == stop.key), None)
        if old is not None:
            stop = stop.model_copy(update={"since": old.since, "attempts": old.attempts + stop.attempts})
        return PendingStops(items=(*(p for p in self.items if p.key != stop.key), stop))

    def remove(self, node_id: str, version: MLNodeVersion) -> PendingStops:
        return PendingStops(
            items=tuple(p for p in self.items if (p.node_id, p.version) != (node_id, version))
        )

    def forget_node(self, node_id: str) -> PendingStops:
        return PendingStops(items=tuple(p for p in self.items if p.node_id != node_id))

    def forget_version(self, version: MLNodeVersion) -> PendingStops:
        """The version became current again: stopping it now would take the live version down."""
        return PendingStops(items=tuple(p for p in self.items if p.version != version))


_NODE_LIST = TypeAdapter(list[NodeConfig])


def load_node_file(text: str) -> tuple[NodeConfig, ...]:
    """Parse a node-config file: a JSON list of nodes (ids must be unique)."""
    nodes = tuple(_NODE_LIST.validate_json(text))
    ids = [n.id for n in nodes]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"node ids must be unique; repeated: {duplicates}")
    return nodes
