"""Settings of a mock MLNode process (env prefix `MOCK_MLNODE_`; the command line overrides)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mock_mlnode.routing import RESERVED_SEGMENTS
from shared.versions import parse_version

__all__ = ["DEFAULT_GPU_LOCK", "MockMLNodeSettings"]

DEFAULT_GPU_LOCK = str(Path(tempfile.gettempdir()) / "mlnode-upgrade-gpu" / "{node}.lock")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class MockMLNodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOCK_MLNODE_", extra="ignore", frozen=True)

    # The versions this process serves; the first answers unprefixed paths.
    versions: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["v3.0.8"], min_length=1)
    # Node names (their path segments in fleet mode); `fleet_size` > 0 generates node-0..node-N-1.
    nodes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["node-0"], min_length=1)
    fleet_size: Annotated[int, Field(ge=0, le=100_000)] = 0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # One GPU per node, shared by the node's versions; `{node}` becomes the node name.
    gpu_lock_path: str = DEFAULT_GPU_LOCK
    model_load_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    stop_s: Annotated[float, Field(ge=0, le=600)] = 0.0
    completion_delay_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    stream_chunks: Annotated[int, Field(ge=1, le=10_000)] = 8
    stream_chunk_delay_s: Annotated[float, Field(ge=0, le=60)] = 0.05
    max_model_len: Annotated[int, Field(ge=1)] = 4096
    # What `inference/up` on a GPU another version holds answers: 500, as the real MLNode does
    # (it has no GPU lock; the load dies in CUDA), or 409 with the holder named, for debugging.
    gpu_busy_status: Literal[409, 500] = 500
    gpu_name: str = "NVIDIA H100 80GB HBM3"
    gpu_memory_mb: Annotated[int, Field(ge=1)] = 81_559
    model_download_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    request_log_limit: Annotated[int, Field(ge=1)] = 100_000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("versions", "nodes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("versions")
    @classmethod
    def _valid_versions(cls, value: list[str]) -> list[str]:
        for raw in value:
            parse_version(raw)  # InvalidVersionError is a ValueError: pydantic reports the reason
        if len(set(value)) != len(value):
            raise ValueError("versions must be distinct")
        return value

    @field_validator("nodes")
    @classmethod
    def _valid_nodes(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NODE_NAME.fullmatch(name):
                raise ValueError(f"node name {name!r} must be letters, digits, '_', '.', '-' (at most 64)")
            if name in RESERVED_SEGMENTS:
                raise ValueError(f"node name {name!r} is an MLNode route segment")
            try:
                parse_version(name)
            except ValueError:
                continue
            raise ValueError(f"node name {name!r} looks like a version")
        if len(set(value)) != len(value):
            raise ValueError("node names must be distinct")
        return value

    @model_validator(mode="after")
    def _fleet(self) -> MockMLNodeSettings:
        if self.fleet_size:
            object.__setattr__(self, "nodes", [f"node-{i}" for i in range(self.fleet_size)])
        return self

    @property
    def default_version(self) -> str:
        return self.versions[0]

    @property
    def default_node(self) -> str:
        return self.nodes[0]
