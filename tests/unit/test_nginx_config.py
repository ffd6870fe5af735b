from __future__ import annotations

from pathlib import Path

import pytest

from devtools.nginx_config import ProxyServer, VersionUpstream, render_nginx_conf, upstream_name
from shared.versions import InvalidEndpointError, InvalidVersionError, parse_version

OLD = VersionUpstream.parse("v3.0.6", "mlnode-306:8080")
NEW = VersionUpstream.parse("v3.0.8", "mlnode-308:8080")


def test_one_location_per_version_with_the_prefix_stripped_and_a_default() -> None:
    conf = render_nginx_conf(
        [ProxyServer(listen=8080, upstreams=[OLD, NEW], default_version=parse_version("v3.0.8"))]
    )
    assert "location /v3.0.6/ {\n            proxy_pass http://mlnode_v3_0_6_8080/;" in conf
    assert "location /v3.0.8/ {\n            proxy_pass http://mlnode_v3_0_8_8080/;" in conf
    assert (
        "location / {\n            proxy_pass http://mlnode_v3_0_8_8080;" in conf
    )  # no slash: path unchanged
    assert "server mlnode-306:8080;" in conf and "server mlnode-308:8080;" in conf


def test_streaming_friendly_and_the_real_timeouts() -> None:
    conf = render_nginx_conf([ProxyServer(listen=8080, upstreams=[OLD])])
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout 24h;",
        "proxy_send_timeout 24h;",
        "proxy_connect_timeout 24h;",
        "client_max_body_size 0;",
    ):
        assert directive in conf
    assert "pid " not in conf  # the container image's defaults apply


def test_local_runtime_dir_and_docker_resolver() -> None:
    local = render_nginx_conf([ProxyServer(listen=9000, upstreams=[OLD])], runtime_dir=Path("/tmp/x"))
    assert "pid /tmp/x/nginx.pid;" in local and "proxy_temp_path /tmp/x/tmp/proxy;" in local
    docker = render_nginx_conf([ProxyServer(listen=8080, upstreams=[OLD, NEW])], resolver="127.0.0.11")
    assert "resolver 127.0.0.11 valid=10s ipv6=off;" in docker
    assert "upstream " not in docker  # names are resolved per request, not at start
    assert "set $mlnode_v3_0_6 mlnode-306:8080;" in docker
    assert "rewrite ^/v3\\.0\\.6(/.*)$ $1 break;" in docker  # the prefix is stripped
    assert "set $mlnode_default mlnode-306:8080;" in docker
    assert upstream_name(OLD.version, 8080) not in docker


def test_two_ports_as_the_real_deployment() -> None:
    conf = render_nginx_conf(
        [ProxyServer(listen=8080, upstreams=[OLD]), ProxyServer(listen=5000, upstreams=[OLD])]
    )
    assert "listen 8080;" in conf and "listen 5000;" in conf
    assert "upstream mlnode_v3_0_6_8080" in conf and "upstream mlnode_v3_0_6_5000" in conf


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: VersionUpstream.parse("..", "h:1"), InvalidVersionError),
        (lambda: VersionUpstream.parse("v1.0.0", "h"), ValueError),
        (lambda: VersionUpstream.parse("v1.0.0", "h;evil:1"), InvalidEndpointError),
        (lambda: ProxyServer(listen=1, upstreams=[]), ValueError),
        (lambda: ProxyServer(listen=1, upstreams=[OLD, OLD]), ValueError),
        (lambda: ProxyServer(listen=1, upstreams=[OLD], default_version=parse_version("v3.0.8")), ValueError),
        (lambda: render_nginx_conf([ProxyServer(listen=1, upstreams=[OLD])] * 2), ValueError),
    ],
)
def test_bad_input_is_refused(make: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()  # type: ignore[operator]
