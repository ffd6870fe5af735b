"""nats-server configuration: JetStream, an optional cluster, and who may reach what.

A forged `version.changed` or `chain.upgrade.scheduled` would move every MLNode, so the server
enforces least privilege with accounts, not only with publish permissions:

- The streams and KV buckets live in one account, `STREAMS`, whose only users are the operator
  (`admin`) and the provisioning step (`provisioner`); they create and update streams, buckets and
  consumers (`mlnode-upgrade nats provision`).
- Each service has an account of its own with no JetStream of its own. It imports from `STREAMS`
  exactly the subjects it needs: publishing its own events, its own KV bucket, fetching from and
  acking its own durable consumers, and the request subjects of another service it may ask.
- A service import rewrites the reply subject, so whatever reply subject a service puts on a
  request, the answer (a publish ack, a direct get, an API response) comes back into the service's
  own account. No route (core or JetStream publish, stream create/update with `republish`,
  `sources` or `mirror`, a push consumer's deliver subject, a reply subject) lets one service's
  credentials put a message on a subject another service owns.

Passwords are written as quoted literals (any characters), or as `$NAME` to refer to a variable
that an included file or the environment defines (see `render_password_include`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADMIN_USER",
    "DEFAULT_GRANTS",
    "PROVISIONER_USER",
    "STREAM_ACCOUNT",
    "ClusterConfig",
    "ConsumerRef",
    "NatsUser",
    "ServiceGrant",
    "TlsConfig",
    "grants_for",
    "render_password_include",
    "render_server_config",
    "user_names",
]

STREAM_ACCOUNT = "STREAMS"
ADMIN_USER = "admin"  # the operator's CLI and tests: everything in the stream account
PROVISIONER_USER = "provisioner"  # creates and updates streams, buckets and consumers; nothing else


@dataclass(frozen=True)
class ConsumerRef:
    """A durable pull consumer a service reads from: `stream` / `durable`."""

    stream: str
    durable: str


@dataclass(frozen=True)
class ServiceGrant:
    """One service's account: the user it connects as and all it may reach, nothing more."""

    user: str
    publishes: tuple[str, ...]  # event subjects it publishes into the streams (JetStream publish)
    bucket: str  # its own KV bucket
    consumers: tuple[ConsumerRef, ...] = ()
    serves: tuple[str, ...] = ()  # core request subjects it answers
    asks: tuple[tuple[str, str], ...] = ()  # (user of the service that answers, subject) it may request
    reads: tuple[str, ...] = ()  # streams whose messages it may get by subject (its own events)

    @property
    def account(self) -> str:
        return self.user.upper().replace("-", "_")

    def stream_imports(self) -> tuple[tuple[str, str], ...]:
        """(subject, response type) of each service it imports from the stream account."""
        kv = f"KV_{self.bucket}"
        single = [
            *self.publishes,
            f"errors.{self.user}",
            f"$KV.{self.bucket}.>",
            f"$JS.API.STREAM.INFO.{kv}",
            f"$JS.API.DIRECT.GET.{kv}",
            f"$JS.API.DIRECT.GET.{kv}.>",
            f"$JS.API.STREAM.MSG.GET.{kv}",
            "$JS.API.INFO",
            *(f"$JS.API.STREAM.MSG.GET.{stream}" for stream in self.reads),
        ]
        out = [(s, "singleton") for s in single]
        for c in self.consumers:
            out += [
                (f"$JS.API.CONSUMER.INFO.{c.stream}.{c.durable}", "singleton"),
                (f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}", "stream"),
                (f"$JS.ACK.{c.stream}.{c.durable}.>", "singleton"),
            ]
        return tuple(out)

    def publish_allow(self) -> tuple[str, ...]:
        """What the user may publish: exactly its imports, so anything else is a reported violation."""
        return (*(s for s, _ in self.stream_imports()), *(subject for _, subject in self.asks))


def grants_for(
    *,
    chain_watcher_bucket: str = "chain_watcher",
    registry_bucket: str = "registry",
    registry_chain_durable: str = "version-registry-chain",
    registry_broker_durable: str = "version-registry-broker",
    broker_bucket: str = "broker",
    broker_durable: str = "broker",
) -> tuple[ServiceGrant, ...]:
    """The three services' grants for the given bucket and durable names (their settings)."""
    return (
        ServiceGrant(user="chain-watcher", publishes=("chain.>",), bucket=chain_watcher_bucket),
        ServiceGrant(
            user="registry",
            publishes=("version.>",),
            bucket=registry_bucket,
            consumers=(
                ConsumerRef("CHAIN", registry_chain_durable),
                ConsumerRef("BROKER", registry_broker_durable),
            ),
            serves=("registry.state", "registry.history", "registry.rollback"),
            reads=("VERSION",),  # the outbox checks what it already published
        ),
        ServiceGrant(
            user="broker",
            publishes=("broker.>",),
            bucket=broker_bucket,
            consumers=(ConsumerRef("VERSION", broker_durable),),
            asks=(("registry", "registry.state"), ("registry", "registry.history")),
        ),
    )


DEFAULT_GRANTS: tuple[ServiceGrant, ...] = grants_for()


def user_names(grants: Sequence[ServiceGrant] = DEFAULT_GRANTS) -> tuple[str, ...]:
    """Every user a secured server has: the services', the operator's and the provisioner's."""
    return (*(g.user for g in grants), ADMIN_USER, PROVISIONER_USER)


@dataclass(frozen=True)
class NatsUser:
    """`password` is written as given: a literal (quoted), or `$NAME` for a variable the server reads."""

    user: str
    password: str


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    host: str
    port: int
    routes: Sequence[str] = field(default_factory=tuple)  # nats-route://host:port of the others


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False  # require client certificates


def _q(value: str) -> str:
    """A quoted string in the server's config syntax (a JSON string is valid there)."""
    return json.dumps(value)


def _password(value: str) -> str:
    """A variable reference (`$NAME`) stays bare for the server to resolve; anything else is quoted."""
    if value.startswith("$") and value[1:].replace("_", "").isalnum() and not value[1:2].isdigit():
        return value
    return _q(value)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _user(user: NatsUser, publish: Sequence[str], subscribe: Sequence[str], *, responses: bool) -> str:
    perms = [f"publish: {{allow: {_list(publish)}}}", f"subscribe: {{allow: {_list(subscribe)}}}"]
    if responses:
        perms.append("allow_responses: true")
    credentials = f"user: {_q(user.user)}, password: {_password(user.password)}"
    return f"{{{credentials}, permissions: {{{', '.join(perms)}}}}}"


_INDENT = "      "


def _accounts(users: Sequence[NatsUser], grants: Sequence[ServiceGrant]) -> list[str]:
    by_name = {u.user: u for u in users}
    unknown = set(by_name) - set(user_names(grants))
    if unknown:
        raise ValueError(f"no grant for NATS users {sorted(unknown)}")
    present = [g for g in grants if g.user in by_name]

    # The stream account exports each subject to exactly the accounts that import it.
    exports: dict[tuple[str, str], list[str]] = {}
    for g in present:
        for subject, response in g.stream_imports():
            exports.setdefault((subject, response), []).append(g.account)
    # Core request subjects: the answering account exports them to the askers and to the operator.
    served: dict[str, dict[str, list[str]]] = {}
    for g in present:
        for subject in g.serves:
            served.setdefault(g.account, {})[subject] = [STREAM_ACCOUNT]
    for g in present:
        for answerer, subject in g.asks:
            owner = next((o for o in present if o.user == answerer), None)
            if owner is not None and subject in owner.serves:
                served[owner.account][subject].append(g.account)

    lines = ["accounts {", f"  {STREAM_ACCOUNT}: {{", "    jetstream: enabled", "    users: ["]
    if ADMIN_USER in by_name:
        lines.append(_INDENT + _user(by_name[ADMIN_USER], [">"], [">"], responses=True))
    if PROVISIONER_USER in by_name:
        lines.append(
            "      " + _user(by_name[PROVISIONER_USER], ["$JS.API.>"], ["_INBOX.>"], responses=False)
        )
    lines += ["    ]", "    exports: ["]
    for (subject, response), accounts in exports.items():
        kind = f", response_type: {response}" if response != "singleton" else ""
        lines.append(f"      {{service: {_q(subject)}, accounts: {_list(accounts)}{kind}}}")
    lines += ["    ]", "    imports: ["]
    for account, subjects in served.items():
        for subject in subjects:
            lines.append(f"      {{service: {{account: {_q(account)}, subject: {_q(subject)}}}}}")
    lines += ["    ]", "  }"]

    for g in present:
        lines += [f"  {g.account}: {{", "    users: ["]
        subscribe = ["_INBOX.>", *g.serves]
        lines.append(
            "      " + _user(by_name[g.user], g.publish_allow(), subscribe, responses=bool(g.serves))
        )
        lines += ["    ]"]
        if g.account in served:
            lines.append("    exports: [")
            for subject, accounts in served[g.account].items():
                lines.append(f"      {{service: {_q(subject)}, accounts: {_list(accounts)}}}")
            lines.append("    ]")
        lines.append("    imports: [")
        for subject, _ in g.stream_imports():
            lines.append(f"      {{service: {{account: {_q(STREAM_ACCOUNT)}, subject: {_q(subject)}}}}}")
        for answerer, subject in g.asks:
            owner = next((o for o in present if o.user == answerer), None)
            if owner is not None:
                lines.append(f"      {{service: {{account: {_q(owner.account)}, subject: {_q(subject)}}}}}")
        lines += ["    ]", "  }"]
    lines.append("}")
    return lines


def render_server_config(
    *,
    server_name: str,
    host: str,
    port: int,
    http_port: int,
    store_dir: Path,
    cluster: ClusterConfig | None = None,
    users: Sequence[NatsUser] = (),
    grants: Sequence[ServiceGrant] = DEFAULT_GRANTS,
    tls: TlsConfig | None = None,
    max_payload: int = 1024 * 1024,
    include: str | None = None,
) -> str:
    """The server's config; with `users`, the accounts above (no user, no authentication)."""
    lines = ["# Generated by mlnode-upgrade (shared/nats_config.py)."]
    if include is not None:
        lines.append(f"include {_q(include)}")
    lines += [
        f"server_name: {_q(server_name)}",
        f"listen: {_q(f'{host}:{port}')}",
        f"http: {_q(f'{host}:{http_port}')}",
        f"max_payload: {max_payload}",
        "jetstream {",
        f"  store_dir: {_q(str(store_dir))}",
        "}",
    ]
    if cluster is not None:
        lines += [
            "cluster {",
            f"  name: {_q(cluster.name)}",
            f"  listen: {_q(f'{cluster.host}:{cluster.port}')}",
            f"  routes: {_list(cluster.routes)}",
            "}",
        ]
    if tls is not None:
        lines += ["tls {", f"  cert_file: {_q(str(tls.cert_file))}", f"  key_file: {_q(str(tls.key_file))}"]
        if tls.ca_file is not None:
            lines.append(f"  ca_file: {_q(str(tls.ca_file))}")
        lines += [f"  verify: {'true' if tls.verify else 'false'}", "}"]
    if users:
        lines += _accounts(users, grants)
    return "\n".join(lines) + "\n"


def render_password_include(passwords: Mapping[str, str]) -> str:
    """A config file that defines one variable per password, quoted, for `include`.

    The server parses an environment variable's value as config syntax, so a password from the
    environment that starts with a digit or holds `#` or quotes breaks the config; a variable
    defined in an included file as a quoted string takes any characters.
    """
    lines = ["# Generated by mlnode-upgrade: NATS passwords. A secret: keep it out of git and images."]
    for name, password in passwords.items():
        if not name.replace("_", "").isalnum() or name[:1].isdigit():
            raise ValueError(f"{name!r} is not a variable name")
        lines.append(f"{name}: {_q(password)}")
    return "\n".join(lines) + "\n"
