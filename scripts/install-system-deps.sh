#!/usr/bin/env bash
# Installs the system packages the tests and the local stack need, from Debian's packages, only
# where missing: nginx (the MLNode proxy), docker-compose (validates deploy/ offline; no Docker
# engine is needed or started) and chromium (the status page's browser tests drive it headless).
# Never starts the distribution's own nginx service.
set -euo pipefail

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_compose() { command -v docker-compose >/dev/null 2>&1; }
have_chromium() { [ -x /usr/bin/chromium ]; }

missing=()
have_nginx || missing+=(nginx)
have_compose || missing+=(docker-compose)
have_chromium || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "missing ${missing[*]} and this user cannot install them: install Debian's packages ${missing[*]}" >&2
    exit 1
  fi
fi

echo "installing ${missing[*]} from apt" >&2
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_nginx || { echo "nginx install failed" >&2; exit 1; }
have_compose || { echo "docker-compose install failed" >&2; exit 1; }
have_chromium || { echo "chromium install failed" >&2; exit 1; }
