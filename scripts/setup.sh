#!/usr/bin/env bash
# Installs what orio-agent needs to run its demo, tests and benchmarks on Debian 12:
# mosquitto (a real broker), socat (pty pairs standing in for serial lines), fuse3 (a file
# system that forgets unsynced writes, for power-cut tests), a venv.
# One progress line per step on stderr; apt's and pip's own output only when they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
started=$(date +%s)
changed=false

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
    say "installing apt packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
    changed=true
    # The demo and the tests start their own broker on a free loopback port; Debian's
    # mosquitto service (localhost:1883), started by the install, is left as it is.
    if [[ " ${need_apt[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null &&
        systemctl is-active --quiet mosquitto 2>/dev/null; then
        say "Debian's mosquitto service now runs on localhost:1883; the demo and the tests" \
            "do not use it (to stop it: systemctl disable --now mosquitto)"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    say "creating the venv in .venv"
    python3 -m venv .venv
    changed=true
fi
# Reinstall only when the declared dependencies changed.
stamp=.venv/.orio-agent-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "pip install (up to a minute): the package and its test tools (log: .venv/pip.log)"
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test,dev]'; } >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        say "pip install failed (log above)"
        exit 1
    fi
    echo "$want" >"$stamp"
    changed=true
fi

if "$changed"; then
    say "done in $(( $(date +%s) - started )) s"
else
    say "up to date"
fi
