#!/usr/bin/env bash
# Installs what orio-agent needs to run its demo, tests and benchmarks on Debian 12:
# mosquitto (a real broker), rabbitmq-server (a second one, whose MQTT plugin sends retained
# messages to no wildcard subscription), socat (pty pairs standing in for serial lines), fuse3
# (a file system that forgets unsynced writes, for power-cut tests), a venv.
# One progress line per step on stderr; apt's and pip's own output only when they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
started=$(date +%s)
changed=false

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)   # sim/rabbitmq.py
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
    # The demo and the tests start their own brokers on free loopback ports; Debian's
    # services (mosquitto on localhost:1883, rabbitmq-server on 5672), started by the
    # install, are left as they are.
    for service in mosquitto rabbitmq-server; do
        if [[ " ${need_apt[*]} " == *" $service "* ]] && command -v systemctl >/dev/null &&
            systemctl is-active --quiet "$service" 2>/dev/null; then
            say "Debian's $service service now runs; the demo and the tests do not use it" \
                "(to stop it: systemctl disable --now $service)"
        fi
    done
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
