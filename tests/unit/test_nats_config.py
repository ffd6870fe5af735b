from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.nats_config import (
    ADMIN_USER,
    DEFAULT_GRANTS,
    PROVISIONER_USER,
    ClusterConfig,
    NatsUser,
    TlsConfig,
    render_password_include,
    render_server_config,
    user_names,
)

GRANT = {g.user: g for g in DEFAULT_GRANTS}


def render(**kwargs: object) -> str:
    return render_server_config(
        server_name="n0",
        host="127.0.0.1",
        port=4222,
        http_port=8222,
        store_dir=Path("/data/js"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_each_service_publishes_only_its_own_subjects() -> None:
    assert "chain.>" in GRANT["chain-watcher"].publish_allow()
    assert not any(p.startswith(("version.", "broker.")) for p in GRANT["chain-watcher"].publish_allow())
    assert "version.>" in GRANT["registry"].publish_allow()
    assert not any(p.startswith(("chain.", "broker.")) for p in GRANT["registry"].publish_allow())
    assert "broker.>" in GRANT["broker"].publish_allow()
    assert not any(
        p.startswith(("chain.", "version.", "registry.rollback")) for p in GRANT["broker"].publish_allow()
    )


def test_no_service_may_create_update_or_delete_anything() -> None:
    """Least privilege: only reads, its own KV writes, fetch and ack of its own consumers."""
    managing = re.compile(r"\$JS\.API\.(STREAM|CONSUMER)\.(CREATE|UPDATE|DELETE|PURGE|DURABLE)|\$JS\.API\.>")
    for grant in DEFAULT_GRANTS:
        allowed = grant.publish_allow()
        assert not [s for s in allowed if managing.search(s)], grant.user
        assert not [s for s in allowed if s in (">", "$JS.>", "$JS.API.>")], grant.user
        own_kv = f"KV_{grant.bucket}"
        for subject in allowed:
            if subject.startswith("$JS.API.STREAM."):
                assert subject.endswith((own_kv, "MSG.GET.VERSION")), (grant.user, subject)


def test_every_service_has_its_own_account_and_the_streams_live_in_one() -> None:
    conf = render(users=[NatsUser(u, "pw") for u in user_names()])
    assert "accounts {" in conf and "authorization" not in conf
    for account in ("STREAMS", "CHAIN_WATCHER", "REGISTRY", "BROKER"):
        assert f"  {account}: {{" in conf
    assert conf.count("jetstream: enabled") == 1  # only the stream account has JetStream
    assert (
        '{service: "$JS.API.CONSUMER.MSG.NEXT.VERSION.broker", accounts: ["BROKER"], response_type: stream}'
        in conf
    )
    assert '{service: "registry.state", accounts: ["STREAMS", "BROKER"]}' in conf
    assert '{service: "registry.rollback", accounts: ["STREAMS"]}' in conf


def test_rendered_config() -> None:
    conf = render(
        cluster=ClusterConfig("c", "127.0.0.1", 6222, ("nats-route://127.0.0.1:6223",)),
        users=[NatsUser("broker", "$BROKER_NATS_PASSWORD"), NatsUser(ADMIN_USER, "a")],
        tls=TlsConfig(Path("/c.pem"), Path("/k.pem"), Path("/ca.pem"), verify=True),
        include="passwords.conf",
    )
    assert conf.splitlines()[1] == 'include "passwords.conf"'
    assert 'listen: "127.0.0.1:4222"' in conf and 'store_dir: "/data/js"' in conf
    assert 'routes: ["nats-route://127.0.0.1:6223"]' in conf
    assert "password: $BROKER_NATS_PASSWORD" in conf  # a variable the included file defines
    assert '"broker.>"' in conf and PROVISIONER_USER not in conf
    assert "verify: true" in conf


@pytest.mark.parametrize(
    "password", ['p"} ; include /etc/passwd', "0123abc", "$1abc", "a$b", "#x y", "$HOME"]
)
def test_literal_passwords_are_quoted_and_inert(password: str) -> None:
    conf = render(users=[NatsUser(ADMIN_USER, password)])
    if password == "$HOME":
        assert "password: $HOME" in conf  # the one form that names a variable
    else:
        assert f"password: {json.dumps(password)}" in conf


def test_unknown_users_are_refused() -> None:
    with pytest.raises(ValueError, match="no grant"):
        render(users=[NatsUser("mallory", "pw")])


def test_password_include_quotes_every_value() -> None:
    text = render_password_include({"BROKER_NATS_PASSWORD": '0ab$c "d" #e f'})
    assert 'BROKER_NATS_PASSWORD: "0ab$c \\"d\\" #e f"' in text
    with pytest.raises(ValueError, match="not a variable name"):
        render_password_include({"1BAD": "x"})
