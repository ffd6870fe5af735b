"""TLS from settings: a client with the CA connects, one without it cannot."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.embedded_nats import EmbeddedNats
from shared.bus import Bus, BusError
from shared.events import BlockCommitted
from shared.nats_config import TlsConfig, render_server_config
from shared.settings import NatsSettings


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl from the base system)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
        "-days", "1", "-subj", "/CN=mlnode-upgrade test CA")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca_crt, crt, key


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Path]]:
    ca, crt, key = make_certs(tmp_path)
    server = EmbeddedNats(
        tmp_path / "nats",
        config=lambda s: render_server_config(
            server_name=s.name,
            host=s.host,
            port=s.port,
            http_port=s.monitor_port,
            store_dir=s.data_dir / "jetstream",
            tls=TlsConfig(cert_file=crt, key_file=key),
        ),
    )
    server.start()
    yield server, ca
    server.stop()


async def test_tls_with_the_ca_from_settings(tls_nats: tuple[EmbeddedNats, Path]) -> None:
    server, ca = tls_nats
    url = server.url.replace("nats://", "tls://")
    bus = await Bus.connect(NatsSettings(url=url, tls_ca_file=ca), "it")
    try:
        await bus.ensure_streams()
        assert (await bus.publish(BlockCommitted(height=1))).seq == 1
    finally:
        await bus.close()


async def test_a_client_that_does_not_trust_the_ca_cannot_connect(
    tls_nats: tuple[EmbeddedNats, Path],
) -> None:
    server, _ = tls_nats
    url = server.url.replace("nats://", "tls://")
    with pytest.raises(BusError, match="cannot connect"):
        await Bus.connect(NatsSettings(url=url, connect_timeout_s=0.5), "it", give_up_after_s=1)
