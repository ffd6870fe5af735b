"""Settings shared by every service: the NATS connection and the common service knobs.

Each service subclasses `ServiceSettings` with its own env prefix (`BROKER_`, `VERSION_REGISTRY_`,
...); nested settings use `__` (`BROKER_NATS__URL=nats://a:4222,nats://b:4222`). Every field
has a default that works with the local stack, so a service starts with no environment at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
SECONDS_PER_DAY = 86_400.0


class SettingsError(ValueError):
    """Configuration that cannot be used; the message names every bad setting."""


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None


class NatsSettings(BaseModel):
    """How to reach NATS and how durable the streams and buckets are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(DEFAULT_NATS_URL, description="One server URL, or several separated by commas")
    name: str | None = Field(None, description="Connection name shown in the server's monitoring")
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    creds_file: Path | None = Field(None, description="A .creds file (JWT + nkey seed)")
    nkey_seed_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_hostname: str | None = None
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    stream_max_age_s: Annotated[float, Field(gt=0)] = 7 * SECONDS_PER_DAY
    duplicate_window_s: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 5.0

    @field_validator("url")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("at least one NATS server URL is required")
        for server in servers:
            if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"{server!r} is not a NATS URL (expected nats://host:port)")
        return ",".join(servers)

    @model_validator(mode="after")
    def _check_pairs(self) -> NatsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self

    @property
    def servers(self) -> list[str]:
        return self.url.split(",")

    def resolved_password(self) -> str | None:
        return self.password.get_secret_value() if self.password else _read_secret(self.password_file)

    def resolved_token(self) -> str | None:
        return self.token.get_secret_value() if self.token else _read_secret(self.token_file)


class AdminTokenSettings(BaseModel):
    """A bearer token for a service's admin routes, given inline or (better) as a file."""

    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None

    def resolved_admin_token(self) -> str | None:
        if self.admin_token is not None:
            return self.admin_token.get_secret_value() or None
        return _read_secret(self.admin_token_file) or None


class ServiceSettings(BaseSettings):
    """Common to all services; subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore", frozen=True)

    nats: NatsSettings = NatsSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 0


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build settings from the environment, turning pydantic's report into one clear error."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            name = "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {prefix}{name}: {err['msg']}")
        raise SettingsError(f"invalid {cls.__name__}:\n" + "\n".join(lines)) from None
