"""The generated config is accepted by a real nginx; a refused config changes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from devtools.embedded_nats import free_port
from devtools.nginx_config import HEALTH_PATH, ProxyServer, VersionUpstream, render_nginx_conf
from devtools.nginx_process import NginxError, NginxProcess


def test_reload_with_a_bad_config_keeps_the_running_one(tmp_path: Path) -> None:
    port = free_port()
    servers = [
        ProxyServer(
            listen=port, listen_host="127.0.0.1", upstreams=[VersionUpstream.parse("v3.0.8", "127.0.0.1:1")]
        )
    ]
    good = render_nginx_conf(servers, runtime_dir=tmp_path)
    with NginxProcess(tmp_path, good, [port]) as nginx:
        assert httpx.get(f"http://127.0.0.1:{port}{HEALTH_PATH}").text == "ok\n"
        # Nothing listens on the upstream: nginx answers 502, it does not hang.
        assert httpx.get(f"http://127.0.0.1:{port}/v3.0.8/api/v1/state").status_code == 502
        with pytest.raises(NginxError, match="nginx rejected"):
            nginx.reload(good.replace("proxy_buffering off;", "proxy_buffering sideways;"))
        assert nginx.conf_path.read_text() == good
        assert httpx.get(f"http://127.0.0.1:{port}{HEALTH_PATH}").status_code == 200
