"""Settings: defaults work for the local stack; bad configuration is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from shared.settings import DEFAULT_NATS_URL, NatsSettings, ServiceSettings, SettingsError, load_settings


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EXAMPLE_", env_nested_delimiter="__", extra="ignore")


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ExampleSettings)
    assert settings.nats.url == DEFAULT_NATS_URL
    assert settings.nats.replicas == 1
    assert settings.log_level == "INFO"


def test_nested_env_with_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_NATS__URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("EXAMPLE_NATS__REPLICAS", "3")
    monkeypatch.setenv("EXAMPLE_LOG_LEVEL", "DEBUG")
    settings = load_settings(ExampleSettings)
    assert settings.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.nats.replicas == 3
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EXAMPLE_NATS__URL", "http://a:4222", "EXAMPLE_NATS__URL: .*not a NATS URL"),
        ("EXAMPLE_NATS__REPLICAS", "0", "EXAMPLE_NATS__REPLICAS: .*greater than or equal to 1"),
        ("EXAMPLE_NATS__REPLICAS", "three", "EXAMPLE_NATS__REPLICAS"),
        ("EXAMPLE_LOG_LEVEL", "LOUD", "EXAMPLE_LOG_LEVEL"),
        ("EXAMPLE_HTTP_PORT", "70000", "EXAMPLE_HTTP_PORT"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(ExampleSettings)


def test_tls_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file"):
        NatsSettings(tls_cert_file=Path("/x.pem"))


def test_secrets_from_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert NatsSettings(token_file=token).resolved_token() == "s3cret"
    with pytest.raises(ValueError, match="cannot read secret file"):
        NatsSettings(token_file=tmp_path / "missing").resolved_token()
    with pytest.raises(ValueError, match="not both"):
        NatsSettings(token="a", token_file=token)


def test_secrets_are_not_printed() -> None:
    assert "hunter2" not in repr(NatsSettings(user="u", password="hunter2"))
