"""deploy/ is valid as the real tools read it, and uses only real settings names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from cli.deploy_files import SECRET_VARIABLES, password_variable, stale_files, write_secrets
from cli.provision import ProvisionSettings
from devtools.embedded_nats import EmbeddedNats, find_nats_server
from devtools.nginx_process import find_nginx
from integration_tests.conftest import REPO_ROOT
from integration_tests.nats_security import awkward_password
from mock_chain.settings import MockChainSettings
from mock_mlnode.settings import MockMLNodeSettings
from services.broker.settings import BrokerSettings
from services.chain_watcher.settings import ChainWatcherSettings
from services.version_registry.settings import RegistrySettings
from shared.bus import Bus
from shared.nats_config import user_names
from shared.settings import NatsSettings

DEPLOY = REPO_ROOT / "deploy"
SETTINGS_OF_MODULE: dict[str, type[BaseSettings]] = {
    "services.version_registry": RegistrySettings,
    "services.chain_watcher": ChainWatcherSettings,
    "services.broker": BrokerSettings,
    "mock_mlnode": MockMLNodeSettings,
    "mock_chain": MockChainSettings,
    "cli": ProvisionSettings,  # `cli nats provision`, the one-shot provisioning step
}
NOT_SETTINGS = {"HEALTHCHECK_URL"}  # read by the image's HEALTHCHECK, not by the service
SECRETS = {
    name: "test-secret"
    for name in (
        "CHAIN_WATCHER_NATS_PASSWORD",
        "REGISTRY_NATS_PASSWORD",
        "BROKER_NATS_PASSWORD",
        "ADMIN_NATS_PASSWORD",
        "PROVISIONER_NATS_PASSWORD",
        "REGISTRY_ADMIN_TOKEN",
        "BROKER_ADMIN_TOKEN",
    )
}


def test_generated_files_are_fresh() -> None:
    assert stale_files(DEPLOY) == [], "run `mlnode-upgrade deploy render` and commit the result"


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    result = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(DEPLOY / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    result = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(DEPLOY / "docker-compose.yml"),
            "--env-file",
            str(empty),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )
    assert result.returncode != 0 and "set in deploy/.env" in result.stderr


@pytest.mark.parametrize(
    "conf", ["nginx/node-1.conf", "nginx/node-2.conf", "k8s/config/mlnode-proxy.conf"], ids=str
)
def test_nginx_accepts_the_deploy_configs(conf: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            find_nginx(),
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(DEPLOY / conf),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("conf", ["nats/nats-server.conf", "k8s/config/nats-server.conf"], ids=str)
def test_nats_server_accepts_the_deploy_config_with_any_password(conf: str, tmp_path: Path) -> None:
    """`deploy secrets` output: generated passwords plus awkward ones an operator might choose."""
    deploy = tmp_path / "deploy"
    (deploy / "nats").mkdir(parents=True)
    awkward = {name: awkward_password() for name in SECRET_VARIABLES if name.endswith("_NATS_PASSWORD")}
    (deploy / ".env").write_text("".join(f"{k}={v.replace('$', '$$')}\n" for k, v in awkward.items()))
    write_secrets(deploy)
    assert (
        "\n".join(f"{k}={v.replace('$', '$$')}" for k, v in awkward.items()) in (deploy / ".env").read_text()
    )
    (deploy / "nats" / "nats-server.conf").write_text((DEPLOY / conf).read_text())
    result = subprocess.run(
        [find_nats_server(), "-t", "-c", str(deploy / "nats" / "nats-server.conf")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )
    assert result.returncode == 0, result.stderr + result.stdout


async def test_every_deploy_user_logs_in_with_an_awkward_password(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    (deploy / "nats").mkdir(parents=True)
    awkward = {name: awkward_password() for name in SECRET_VARIABLES if name.endswith("_NATS_PASSWORD")}
    (deploy / ".env").write_text("".join(f"{k}={v.replace('$', '$$')}\n" for k, v in awkward.items()))
    write_secrets(deploy)
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    server = EmbeddedNats(
        deploy / "nats",
        config=lambda s: (
            conf.replace('"0.0.0.0:4222"', f'"127.0.0.1:{s.port}"')
            .replace('"0.0.0.0:8222"', f'"127.0.0.1:{s.monitor_port}"')
            .replace('"/data/jetstream"', f'"{s.data_dir / "js"}"')
        ),
    )
    with server:
        for user in user_names():
            password = awkward[password_variable(user)]
            bus = await Bus.connect(
                NatsSettings(url=server.url, user=user, password=password, connect_timeout_s=1.0), user
            )
            await bus.close()


def _substitute(value: Any) -> str:
    text = str(value)
    if text.startswith("${"):
        return "test-secret"
    return text


def _check_env(module: str, env: dict[str, str], where: str) -> None:
    settings_cls = SETTINGS_OF_MODULE[module]
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    for name in env:
        if name in NOT_SETTINGS:
            continue
        assert name.startswith(prefix), f"{where}: {name} does not have the {prefix} prefix of {module}"
        path = name.removeprefix(prefix).lower().split("__")
        model: Any = settings_cls
        for part in path:
            fields = model.model_fields
            assert part in fields, f"{where}: {name} is not a setting of {module} ({part!r} unknown)"
            model = fields[part].annotation
    # And the values are accepted, as the service would read them.
    old = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k not in NOT_SETTINGS})
        settings_cls()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_every_compose_environment_variable_is_a_real_setting() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    checked = set()
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("mlnode-upgrade"):
            module = service["command"][0]
            env = {k: _substitute(v) for k, v in (service.get("environment") or {}).items()}
            _check_env(module, env, f"docker-compose.yml service {name}")
            checked.add(module)
    assert checked == set(SETTINGS_OF_MODULE)


def test_every_kubernetes_environment_variable_is_a_real_setting() -> None:
    checked = set()
    for manifest in ("services.yaml", "mlnodes.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / manifest).read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"] != "mlnode-upgrade":
                    continue
                module = container["args"][0]
                env = {e["name"]: str(e.get("value", "test-secret")) for e in container.get("env", [])}
                _check_env(module, env, f"k8s/{manifest} {doc['metadata']['name']}/{container['name']}")
                checked.add(module)
    assert checked == {
        "services.version_registry",
        "services.chain_watcher",
        "services.broker",
        "mock_mlnode",
    }


def _default(image: str) -> str:
    """`${NAME:-default}` → default: what compose runs when the environment does not override it."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", image)
    return match.group(1) if match else image


def test_compose_builds_from_the_one_dockerfile_and_pins_images() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    images = {_default(s.get("image", "")) for s in services.values()}
    assert all(":" in image and not image.endswith(":latest") for image in images), images
    assert {"nginx:1.28.0-alpine", "nats:2.15.1-alpine", "mlnode-upgrade:0.1.0"} <= images
    # The project image is built once: one service builds it, every other one only runs it.
    builders = [name for name, s in services.items() if "build" in s]
    assert len(builders) == 1, builders
    build = services[builders[0]]["build"]
    assert services[builders[0]]["image"] == "mlnode-upgrade:0.1.0"
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert _default(build["args"]["PYTHON_IMAGE"]) == "python:3.11.14-slim-bookworm"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm" in dockerfile
    assert "FROM ${PYTHON_IMAGE}" in dockerfile
