#!/usr/bin/env bash
# Sets up (Debian 12, as root: apt packages, a venv) and runs the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k mqtt -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Real parts are required: a missing broker or socat fails the suite, never skips it.
for tool in socat mosquitto_passwd systemd-analyze fusermount3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || { echo "missing mosquitto" >&2; exit 1; }
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
# A short run of the benchmark harness, so that it cannot rot (figures: bench/README.md).
.venv/bin/python -m bench.harness smoke --json run/bench-smoke.json
