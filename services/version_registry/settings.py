"""version-registry settings (env prefix `VERSION_REGISTRY_`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import AdminTokenSettings, ServiceSettings

__all__ = ["RegistrySettings"]


class RegistrySettings(ServiceSettings, AdminTokenSettings):
    """HTTP rollback needs `Authorization: Bearer <admin token>`; without a token it is refused."""

    model_config = SettingsConfigDict(env_prefix="VERSION_REGISTRY_", env_nested_delimiter="__", frozen=True)

    service_name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")] = "registry"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 50081
    grpc_enabled: bool = True
    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "registry"
    chain_durable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "version-registry-chain"
    broker_durable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "version-registry-broker"
    ack_wait_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
