#!/usr/bin/env bash
# Installs what orio-agent needs to run its demo, tests and benchmarks on Debian 12:
# mosquitto (a real broker), socat (pty pairs standing in for serial lines), fuse3 (a file
# system that forgets unsynced writes, for power-cut tests), a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)
command -v socat >/dev/null || need_apt+=(socat)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)   # the unit file's tests
command -v fusermount3 >/dev/null || need_apt+=(fuse3)   # libfuse 3 for sim.lazyfs (power-cut tests)
command -v openssl >/dev/null || need_apt+=(openssl)   # throwaway certificates for the TLS tests
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The broker is started by the tests and the demo on a free loopback port, never as a system service.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Reinstall only when the declared dependencies changed.
stamp=.venv/.orio-agent-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test,dev]'; } >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "setup: pip install failed (log above)" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
fi
