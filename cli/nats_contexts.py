"""NATS CLI contexts for the local stack's users, so `nats --context mlnode-<user> ...` just works.

The local stack refuses anonymous clients and picks its ports at random, so a bare `nats pub` has
nothing to connect with. The NATS CLI (github.com/nats-io/natscli, its contexts are
nats-io/jsm.go's `natscontext`) reads a context from `$XDG_CONFIG_HOME/nats/context/<name>.json`;
writing one per user under the run directory (mode 0600: it holds the password) and pointing
`XDG_CONFIG_HOME` there gives the CLI the stack's URL and each user's password without touching
anything in the user's home.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from shared.nats_config import ADMIN_USER, DEFAULT_GRANTS, PROVISIONER_USER, ServiceGrant, user_names

__all__ = [
    "CONTEXT_PREFIX",
    "context_dir",
    "context_document",
    "context_name",
    "ready_lines",
    "user_description",
    "write_contexts",
]

CONTEXT_PREFIX = "mlnode-"


def context_name(user: str) -> str:
    """`mlnode-<user>`: prefixed, so the stack's contexts never shadow one of the user's own."""
    return f"{CONTEXT_PREFIX}{user}"


def context_dir(config_home: Path) -> Path:
    """Where the NATS CLI looks for contexts when `XDG_CONFIG_HOME=config_home`."""
    return config_home / "nats" / "context"


def user_description(user: str, grants: Sequence[ServiceGrant] = DEFAULT_GRANTS) -> str:
    """What the user may do, as `nats context ls` shows it: which context to pick for what."""
    if user == ADMIN_USER:
        return "the operator: publishes and subscribes to every subject, requests registry.*, streams"
    if user == PROVISIONER_USER:
        return "creates and updates streams, KV buckets and consumers (JetStream API only)"
    grant = next((g for g in grants if g.user == user), None)
    if grant is None:
        raise ValueError(f"no grant for NATS user {user!r}")
    serves = f"; answers {', '.join(grant.serves)}" if grant.serves else ""
    return f"the {user} service: publishes {', '.join(grant.publishes)}{serves}"


def context_document(*, url: str, user: str, password: str, description: str) -> dict[str, object]:
    """A context as `nats context save` writes it: every field of jsm.go's settings, in its order.

    The CLI fills a missing field with its zero value; writing them all keeps the file identical
    to what the CLI itself would write, so `nats context edit` shows nothing surprising.
    """
    return {
        "description": description,
        "url": url,
        "socks_proxy": "",
        "token": "",
        "user": user,
        "password": password,
        "creds": "",
        "nkey": "",
        "cert": "",
        "key": "",
        "ca": "",
        "nsc": "",
        "jetstream_domain": "",
        "jetstream_api_prefix": "",
        "jetstream_event_prefix": "",
        "inbox_prefix": "",
        "user_jwt": "",
        "color_scheme": "",
        "tls_first": False,
    }


def write_contexts(
    config_home: Path, url: str, secrets_dir: Path, users: Sequence[str] = user_names()
) -> list[Path]:
    """One context per user (`<config_home>/nats/context/mlnode-<user>.json`, 0600); their paths.

    Rewritten at every start: the ports (and so the URL) change each time.
    """
    directory = context_dir(config_home)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for user in users:
        password = (secrets_dir / f"{user}.password").read_text().strip()
        document = context_document(
            url=url, user=user, password=password, description=f"mlnode-upgrade: {user_description(user)}"
        )
        path = directory / f"{context_name(user)}.json"
        # Created 0600 before the password is written, so it is never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(document, indent=2) + "\n")
        path.chmod(0o600)
        written.append(path)
    return written


def ready_lines(config_home: str, run_dir_option: str = "") -> list[str]:
    """Commands to paste: the NATS CLI with the stack's contexts, and the same without the CLI.

    `run_dir_option` is `--run-dir X` for a stack outside the default run directory.
    """
    env = f"XDG_CONFIG_HOME={shlex.quote(config_home)}"
    watcher, admin = context_name("chain-watcher"), context_name(ADMIN_USER)
    opt = f" {run_dir_option}" if run_dir_option else ""
    return [
        f"{env} nats --context {watcher} pub chain.block '{{\"height\": 120}}'",
        f"{env} nats --context {admin} sub 'chain.>'",
        f"{env} nats --context {admin} req registry.state '{{}}'",
        f"mlnode-upgrade events pub{opt} chain.block '{{\"height\": 120}}'",
        f"mlnode-upgrade events sub{opt} 'chain.>'",
    ]
