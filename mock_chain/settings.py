"""Settings of the mock chain process (env prefix `MOCK_CHAIN_`; the command line overrides)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mock_chain.chain import DEFAULT_CHAIN_ID, GENESIS_MLNODE_VERSION
from shared.versions import parse_version

__all__ = ["MockChainSettings"]


class MockChainSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOCK_CHAIN_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    # The real node's defaults; 0 picks a free port.
    rpc_port: Annotated[int, Field(ge=0, le=65535)] = 26657
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 9090
    # Seconds between blocks; 0 means blocks only come from `POST /advance` (tests).
    block_time_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    voting_period_blocks: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    chain_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,50}$")] = DEFAULT_CHAIN_ID
    genesis_version: str = GENESIS_MLNODE_VERSION
    # How many past heights a query pinned with x-cosmos-block-height can still reach.
    state_retention_blocks: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    # How many of the newest blocks `/block` still serves (0: all), as a pruning node keeps.
    block_retention_blocks: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    # A lagging query node: `/status`, `/block` and gRPC answer from a view this many blocks
    # behind, while the websocket sends NewBlock for every block (also `POST /mock/faults/lag`).
    query_lag_blocks: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("genesis_version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        parse_version(value)
        return value
