"""The local stack's NATS: a password per service user, one server or a routed cluster of them.

Kept apart from `cli.stack.LocalStack` because it is the one part with its own rules: users and
their grants come from `shared.nats_config`, and a cluster is ready only once JetStream has all
its peers.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cli.supervisor import ProcessSpec, Supervisor
from devtools.embedded_nats import find_nats_server, free_port
from shared.nats_config import ClusterConfig, NatsUser, render_server_config, user_names

__all__ = ["start_nats", "write_secrets"]


def write_secrets(run_dir: Path) -> Path:
    """A password per NATS user and the admin token under `run_dir/secrets`, kept across restarts."""
    directory = run_dir / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for user in user_names():
        path = directory / f"{user}.password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
    token = directory / "admin.token"
    if not token.exists():
        token.write_text(secrets.token_urlsafe(24))
        token.chmod(0o600)
    return directory


def start_nats(
    supervisor: Supervisor, run_dir: Path, secrets_dir: Path, count: int
) -> tuple[list[str], list[str]]:
    """`count` servers with every service user; returns their client URLs and monitoring URLs."""
    users = [NatsUser(user, (secrets_dir / f"{user}.password").read_text().strip()) for user in user_names()]
    ports = [(free_port(), free_port(), free_port()) for _ in range(count)]  # client, monitor, route
    urls, monitors = [], []
    for i, (port, monitor, route) in enumerate(ports):
        directory = run_dir / "nats" / f"n{i}"
        directory.mkdir(parents=True, exist_ok=True)
        cluster = None
        if count > 1:
            routes = [f"nats-route://127.0.0.1:{r}" for j, (_, _, r) in enumerate(ports) if j != i]
            cluster = ClusterConfig("local", "127.0.0.1", route, routes)
        conf = directory / "nats-server.conf"
        conf.write_text(
            render_server_config(
                server_name=f"n{i}",
                host="127.0.0.1",
                port=port,
                http_port=monitor,
                store_dir=directory / "jetstream",
                cluster=cluster,
                users=users,
            )
        )
        conf.chmod(0o600)
        urls.append(f"nats://127.0.0.1:{port}")
        monitors.append(f"http://127.0.0.1:{monitor}")
        # In a cluster a server is ready once it answers; JetStream needs its peers first.
        ready = "/healthz?js-enabled-only=true" if count == 1 else "/varz"
        supervisor.start(
            ProcessSpec(
                "nats" if count == 1 else f"nats-{i}",
                [find_nats_server(), "-c", str(conf)],
                ready_url=f"http://127.0.0.1:{monitor}{ready}",
            )
        )
    if count > 1:
        for monitor_url in monitors:
            supervisor.wait_for_url(f"{monitor_url}/healthz?js-enabled-only=true", 60.0)
    return urls, monitors
