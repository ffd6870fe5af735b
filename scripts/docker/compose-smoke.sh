#!/usr/bin/env bash
# The compose stack on the local engine, one upgrade under load (scripts/docker/smoke.py), then
# `docker-compose down -v`. Needs the engine running (engine.sh start), the local images
# (images.sh) and the project image mlnode-upgrade:0.1.0; `make docker-smoke` does all of it.
#
# Runs on a temporary copy of deploy/ with fresh secrets from `mlnode-upgrade deploy secrets`,
# so the repository's deploy/.env (if any) is neither used nor changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/mlnode-docker.sock}
export DOCKER=${DOCKER:-/usr/bin/docker}
export NATS_IMAGE=${NATS_IMAGE:-mlnode-local/nats:2.15.1}
export NGINX_IMAGE=${NGINX_IMAGE:-mlnode-local/nginx:1.28}
export PYTHON_IMAGE=${PYTHON_IMAGE:-mlnode-local/python:3.11}
PROJECT=${SMOKE_PROJECT:-mlnode-smoke}

WORK=$(mktemp -d /tmp/mlnode-compose-smoke.XXXXXX)
cleanup() {
    # smoke.py tears the stack down itself; this covers an interrupted run.
    docker-compose -p "$PROJECT" -f "$WORK/deploy/docker-compose.yml" down -v --remove-orphans \
        >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cp -r deploy "$WORK/deploy"
rm -f "$WORK/deploy/.env" "$WORK/deploy/nats/passwords.conf"
.venv/bin/mlnode-upgrade deploy secrets --out "$WORK/deploy" >/dev/null

"$DOCKER" image inspect mlnode-upgrade:0.1.0 >/dev/null 2>&1 || {
    echo "compose-smoke: no image mlnode-upgrade:0.1.0; build it first (make docker-smoke does)" >&2
    exit 1
}
.venv/bin/python scripts/docker/smoke.py --deploy-dir "$WORK/deploy" --project "$PROJECT" "$@"
