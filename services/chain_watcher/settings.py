"""Settings of the chain-watcher (env prefix `CHAIN_WATCHER_`, nested with `__`).

`CHAIN_WATCHER_RPC_URL=http://node:26657 CHAIN_WATCHER_GRPC_ADDRESS=node:9090
CHAIN_WATCHER_NATS__URL=nats://nats:4222` is a complete configuration.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

__all__ = ["ChainWatcherSettings"]

_GRPC_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


class ChainWatcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHAIN_WATCHER_")

    rpc_url: str = Field("http://127.0.0.1:26657", description="CometBFT RPC of a chain node")
    websocket_url: str | None = Field(None, description="Default: the RPC URL with ws(s):// and /websocket")
    grpc_address: str = Field("127.0.0.1:9090", description="Cosmos gRPC of the same node, host:port")
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Websocket reconnects: exponential backoff with jitter, from initial to max; never gives up.
    reconnect_initial_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    # /status polling: the fallback while the websocket is down, and a safety net while it is up.
    poll_interval_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    status_check_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Gap filling: how far behind it still publishes every block (beyond, it jumps and says so).
    max_backfill_blocks: Annotated[int, Field(ge=1)] = 100_000
    page_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    # /readyz fails when the cursor is more than this many blocks behind the chain.
    max_lag_blocks: Annotated[int, Field(ge=0)] = 5
    publish_retry_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    # chain.version is also published every this many seconds (besides start-up and changes), at
    # the newest published height, so the registry can correct itself from the chain's own word.
    version_snapshot_interval_s: Annotated[float, Field(ge=0.05, le=86_400)] = 10.0
    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "chain_watcher"
    websocket_max_message_bytes: Annotated[int, Field(ge=65_536)] = 32 * 1024 * 1024

    @field_validator("rpc_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"^https?://[^/\s?#]+(?:/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL of a CometBFT RPC endpoint")
        return value.rstrip("/")

    @field_validator("websocket_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"^wss?://[^/\s?#]+(?:/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r} is not a ws(s):// URL")
        return value

    @field_validator("grpc_address")
    @classmethod
    def _grpc_address(cls, value: str) -> str:
        if not _GRPC_ADDRESS.fullmatch(value):
            raise ValueError(f"{value!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _backoff_range(self) -> ChainWatcherSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        return self

    @property
    def resolved_websocket_url(self) -> str:
        """The real dapi's rule: the node URL with scheme ws and path /websocket."""
        if self.websocket_url:
            return self.websocket_url
        scheme, rest = self.rpc_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/websocket"
