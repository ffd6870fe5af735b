"""version-registry settings (env prefix `VERSION_REGISTRY_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

__all__ = ["RegistrySettings"]


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VERSION_REGISTRY_", env_nested_delimiter="__", frozen=True)

    service_name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")] = "registry"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 50081
    grpc_enabled: bool = True
    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "registry"
    chain_durable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "version-registry-chain"
    broker_durable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "version-registry-broker"
    ack_wait_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # HTTP rollback requires `Authorization: Bearer <token>`; without a token it is refused.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None

    def resolved_admin_token(self) -> str | None:
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip() or None
        return None
