#!/usr/bin/env bash
# A local Docker engine of our own: scripts/docker/engine.sh start|stop|status
#
# Installs docker.io (dockerd 20.10) and debootstrap with apt when missing, and runs dockerd in
# the background with its own pid file, data root, exec root and socket, so it never touches
# (or stops) another engine on the machine. Network flags leave the host alone: no iptables
# rules, no forwarding, published ports bound to 127.0.0.1.
#
#   export DOCKER_HOST=unix:///run/mlnode-docker.sock
#
# Overridable: MLNODE_DOCKER_SOCK, MLNODE_DOCKER_DATA, MLNODE_DOCKER_EXEC, MLNODE_DOCKER_PIDFILE,
# MLNODE_DOCKER_LOG, MLNODE_DOCKER_START_TIMEOUT_S.
set -euo pipefail

SOCK=${MLNODE_DOCKER_SOCK:-/run/mlnode-docker.sock}
DATA=${MLNODE_DOCKER_DATA:-/var/lib/mlnode-docker}
EXEC=${MLNODE_DOCKER_EXEC:-/run/mlnode-docker}
PIDFILE=${MLNODE_DOCKER_PIDFILE:-/run/mlnode-dockerd.pid}
LOG=${MLNODE_DOCKER_LOG:-/var/log/mlnode-dockerd.log}
TIMEOUT=${MLNODE_DOCKER_START_TIMEOUT_S:-60}
export DOCKER_HOST="unix://$SOCK"
# Debian's client matches Debian's daemon; another `docker` earlier on PATH may be newer.
DOCKER=${DOCKER:-/usr/bin/docker}

log() { echo "engine: $*" >&2; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 && [ -x /usr/bin/docker ] || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The pid of the dockerd we started, if it is alive and really ours (its command line has our
# data root); nothing otherwise.
our_pid() {
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -d "/proc/$pid" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-root $DATA" || return 1
    echo "$pid"
}

answers() { timeout 5 "$DOCKER" info >/dev/null 2>&1; }

start() {
    install_packages
    if pid=$(our_pid); then
        if answers; then
            log "already running (pid $pid, $DOCKER_HOST)"
            return 0
        fi
    else
        if [ -S "$SOCK" ] && answers; then
            log "another engine already serves $SOCK; not starting a second one, not touching it"
            return 1
        fi
        rm -f "$SOCK"
        mkdir -p "$DATA" "$EXEC" "$(dirname "$LOG")"
        log "starting dockerd ($DOCKER_HOST, data root $DATA, log $LOG)"
        # setsid: its own session, so the caller's Ctrl-C or process group kill leaves it alone.
        setsid dockerd \
            --pidfile "$PIDFILE" \
            --data-root "$DATA" \
            --exec-root "$EXEC" \
            --host "unix://$SOCK" \
            --storage-driver=overlay2 \
            --iptables=false --ip-forward=false --ip-masq=false --ip=127.0.0.1 \
            >>"$LOG" 2>&1 </dev/null &
        local launched=$!
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until answers; do
        if [ -n "${launched:-}" ] && ! kill -0 "$launched" 2>/dev/null; then
            log "dockerd exited during start; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "dockerd did not answer within ${TIMEOUT}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 0.2
    done
    log "ready: $("$DOCKER" version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}') ($DOCKER_HOST)"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        log "not running (no live dockerd of ours in $PIDFILE)"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30)) killed=0
    while [ -d "/proc/$pid" ]; do
        if [ $SECONDS -ge $deadline ] && [ $killed = 0 ]; then
            log "dockerd pid $pid still alive after 30s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            killed=1
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    log "stopped"
}

status() {
    if pid=$(our_pid) && answers; then
        echo "running pid=$pid DOCKER_HOST=$DOCKER_HOST $("$DOCKER" version --format 'server={{.Server.Version}}')"
    else
        echo "stopped"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
