#!/usr/bin/env bash
# `make docker-smoke`: engine start → local images → project image → compose smoke → teardown.
# `make docker-test` (WITH_SUITES=1): then the integration suites on the testcontainers backend.
# The engine is stopped at the end, on failure too, if this run started it; an engine that was
# already running (engine.sh start from an earlier shell) is left running. KEEP_ENGINE=1 always
# leaves it running.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/mlnode-docker.sock}
export DOCKER=${DOCKER:-/usr/bin/docker}
export PYTHON_IMAGE=${PYTHON_IMAGE:-mlnode-local/python:3.11}
ENGINE=scripts/docker/engine.sh
t0=$SECONDS
step() { printf '\n== %s (%ss since start)\n' "$*" "$((SECONDS - t0))"; }

if "$ENGINE" status >/dev/null 2>&1; then
    started_here=0
else
    started_here=1
fi
stop_engine() {
    local rc=$?
    if [ "$started_here" = 1 ] && [ "${KEEP_ENGINE:-0}" != 1 ]; then
        "$ENGINE" stop || true
    else
        echo "docker-smoke: leaving the engine running ($DOCKER_HOST)"
    fi
    echo "docker-smoke: $([ $rc = 0 ] && echo OK || echo "FAILED (exit $rc)") in $((SECONDS - t0))s"
    exit $rc
}
trap stop_engine EXIT

step "engine"
"$ENGINE" start
step "local images"
scripts/docker/images.sh
step "project image mlnode-upgrade:0.1.0 (FROM $PYTHON_IMAGE)"
s=$SECONDS
"$DOCKER" build --quiet --network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
    -f deploy/Dockerfile -t mlnode-upgrade:0.1.0 . >/dev/null
echo "built in $((SECONDS - s))s ($("$DOCKER" image inspect -f '{{.Size}}' mlnode-upgrade:0.1.0 | awk '{printf "%d MB", $1/1e6}'))"
step "compose smoke"
scripts/docker/compose-smoke.sh
if [ "${WITH_SUITES:-0}" = 1 ]; then
    step "integration suites on the testcontainers backend (NATS in mlnode-local/nats:2.15.1)"
    MLNODE_TEST_BACKEND=testcontainers MLNODE_TEST_NATS_IMAGE=mlnode-local/nats:2.15.1 \
        .venv/bin/pytest integration_tests ${PYTEST_ARGS:-}
fi
