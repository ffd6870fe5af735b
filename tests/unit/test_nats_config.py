from __future__ import annotations

from pathlib import Path

from shared.nats_config import SERVICE_ACCESS, ClusterConfig, NatsUser, TlsConfig, render_server_config


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
    assert "chain.>" in SERVICE_ACCESS["chain-watcher"].publish
    assert not any(p.startswith(("version.", "broker.")) for p in SERVICE_ACCESS["chain-watcher"].publish)
    assert "version.>" in SERVICE_ACCESS["registry"].publish
    assert not any(p.startswith(("chain.", "broker.")) for p in SERVICE_ACCESS["registry"].publish)
    assert "broker.>" in SERVICE_ACCESS["broker"].publish
    assert not any(
        p.startswith(("chain.", "version.", "registry.rollback")) for p in SERVICE_ACCESS["broker"].publish
    )
    for name in ("chain-watcher", "registry", "broker"):
        assert "$JS.API.STREAM.DELETE.>" in SERVICE_ACCESS[name].deny_publish


def test_rendered_config() -> None:
    conf = render(
        cluster=ClusterConfig("c", "127.0.0.1", 6222, ("nats-route://127.0.0.1:6223",)),
        users=[NatsUser("broker", "$BROKER_NATS_PASSWORD", SERVICE_ACCESS["broker"])],
        tls=TlsConfig(Path("/c.pem"), Path("/k.pem"), Path("/ca.pem"), verify=True),
    )
    assert 'listen: "127.0.0.1:4222"' in conf and 'store_dir: "/data/js"' in conf
    assert 'routes: ["nats-route://127.0.0.1:6223"]' in conf
    assert "password: $BROKER_NATS_PASSWORD" in conf  # read from the environment by the server
    assert '"broker.>"' in conf and 'deny: ["$JS.API.STREAM.DELETE.>"' in conf
    assert "verify: true" in conf


def test_quoting_keeps_hostile_values_inert() -> None:
    conf = render(users=[NatsUser("x", 'p"} ; include /etc/passwd', SERVICE_ACCESS["admin"])])
    assert 'password: "p\\"} ; include /etc/passwd"' in conf
