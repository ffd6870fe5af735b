"""Broker settings (env prefix `BROKER_`; nested with `__`, e.g. `BROKER_HANDOFF__DRAIN_TIMEOUT_S=10`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.broker.coordinator import Policies
from services.broker.handoff import HandoffPolicy
from services.broker.mlnode_client import ClientTimeouts
from services.broker.staging import StagingPolicy
from shared.settings import AdminTokenSettings, ServiceSettings

__all__ = ["BrokerSettings", "ClientSettings", "HandoffSettings", "StagingSettings"]

Seconds = Annotated[float, Field(gt=0, le=86_400)]


class HandoffSettings(BaseModel):
    """Bounds of one node's handoff (see `handoff.HandoffPolicy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drain_timeout_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    stop_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    stop_backoff_s: Seconds = 0.5
    stop_backoff_max_s: Seconds = 8.0
    up_attempts: Annotated[int, Field(ge=1, le=1000)] = 3
    up_backoff_s: Seconds = 1.0
    health_timeout_s: Seconds = 120.0
    health_interval_s: Seconds = 0.25
    observe_timeout_s: Seconds = 2.0

    def policy(self, **override: float | int) -> HandoffPolicy:
        return HandoffPolicy(**{**self.model_dump(), **override})


class StagingSettings(BaseModel):
    """The staged switch (see `staging`): `share` 0 keeps every node switching at the height."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: Annotated[float, Field(ge=0, le=1)] = 0.5
    old_floor: Annotated[float, Field(ge=0, le=1)] = 0.25
    default_load_s: Seconds = 120.0
    margin_s: Annotated[float, Field(ge=0, le=86_400)] = 10.0
    margin_blocks: Annotated[int, Field(ge=0, le=10_000)] = 1
    default_block_time_s: Seconds = 6.0

    def policy(self) -> StagingPolicy:
        return StagingPolicy(
            share=self.share,
            old_floor=self.old_floor,
            default_load_s=self.default_load_s,
            margin_s=self.margin_s,
            margin_blocks=self.margin_blocks,
        )


class ClientSettings(BaseModel):
    """Timeouts of MLNode calls (each node's connection pool is sized from its max_concurrent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_s: Seconds = 2.0
    management_s: Seconds = 10.0
    stop_s: Seconds = 40.0
    up_s: Seconds = 900.0
    inference_s: Seconds = 900.0

    def timeouts(self) -> ClientTimeouts:
        return ClientTimeouts(
            connect_s=self.connect_s,
            management_s=self.management_s,
            stop_s=self.stop_s,
            up_s=self.up_s,
            inference_s=self.inference_s,
        )


class BrokerSettings(ServiceSettings, AdminTokenSettings):
    """Adding, changing and removing nodes over HTTP needs `Authorization: Bearer <admin token>`."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http_port: Annotated[int, Field(ge=0, le=65535)] = 8082
    service_name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")] = "broker"
    # A JSON list of nodes in the real node-config format; loaded into KV once (then the admin API rules).
    nodes_file: Path | None = None
    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "broker"
    durable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "broker"
    ack_wait_s: Seconds = 30.0
    # How long a forwarded request waits for a ready node; must exceed the model load time.
    request_wait_s: Seconds = 120.0
    forward_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    reconcile_interval_s: Seconds = 30.0
    pending_stop_interval_s: Seconds = 10.0
    readiness_interval_s: Seconds = 10.0
    registry_timeout_s: Seconds = 2.0
    # Idle keep-alive connections are kept longer than clients keep theirs (Go's default is 90 s;
    # httpx's 5 s equals uvicorn's default), so a client never sends on a connection we close.
    http_keep_alive_s: Seconds = 120.0
    dtype: str = "float16"
    handoff: HandoffSettings = HandoffSettings()
    heal_health_timeout_s: Seconds = 30.0
    client: ClientSettings = ClientSettings()
    staging: StagingSettings = StagingSettings()

    @model_validator(mode="after")
    def _wait_outlasts_handoff_steps(self) -> BrokerSettings:
        if self.request_wait_s <= self.handoff.drain_timeout_s:
            raise ValueError(
                "request_wait_s must exceed handoff.drain_timeout_s: requests arriving at the switch "
                "wait for the drain, the stop and the model load"
            )
        return self

    def policies(self) -> Policies:
        return Policies(
            handoff=self.handoff.policy(),
            pending=self.handoff.policy(stop_attempts=1),
            heal=self.handoff.policy(health_timeout_s=self.heal_health_timeout_s),
            staging=self.staging.policy(),
            default_block_time_s=self.staging.default_block_time_s,
        )
