#!/usr/bin/env bash
# Builds the .deb (or takes one), installs it on this machine and checks what a user gets:
#   scripts/test-deb.sh                          build with scripts/build-deb.sh, then test
#   scripts/test-deb.sh dist/orio-agent_*.deb    test that package
# Debian 12, as root, on a machine (or CI runner) that may be changed: it purges any
# orio-agent already installed, deletes a leftover orio-agent user, installs, upgrades,
# removes and purges. systemd need not be running. Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

started=$(date +%s)
failures=0
pass() { printf 'ok    %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failures=$((failures + 1)); }
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    local what=$1 out; shift
    if out=$("$@" 2>&1); then
        pass "$what"
    else
        fail "$what"
        [ -z "$out" ] || printf '%s\n' "$out" | tail -n 15 | sed 's/^/      /'
    fi
}
step() { printf '\n== %s\n' "$*"; }
die() { printf 'test-deb: %s\n' "$*" >&2; exit 1; }
# quiet apt, but show its output when it fails
run_apt() {
    local out
    if ! out=$(apt-get -y -q "$@" </dev/null 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
}
status_of() { dpkg-query -W -f='${db:Status-Abbrev}' orio-agent 2>/dev/null | tr -d ' ' || true; }

[ "$(id -u)" = 0 ] || die "run as root (it installs and purges the package)"
command -v systemd-analyze >/dev/null || die "systemd-analyze is missing (Debian package: systemd)"

if [ $# -gt 0 ]; then
    deb=$1
else
    deb=$(scripts/build-deb.sh)
fi
[ -f "$deb" ] || die "no such package: $deb"
deb=$(realpath "$deb")
version=$(dpkg-deb -f "$deb" Version)
upstream=${version%-*}
built=$(date +%s)

VENV=/opt/venvs/orio-agent
CONFIG=/etc/orio-agent/config.toml
STATE=/var/lib/orio-agent
UNIT=/lib/systemd/system/orio-agent.service
WANTS=/etc/systemd/system/multi-user.target.wants/orio-agent.service
MODULES=/usr/lib/modules-load.d/orio-agent.conf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "clean slate"
if [ -n "$(status_of)" ] && [ "$(status_of)" != "un" ]; then
    run_apt purge orio-agent
fi
# Earlier runs' purges keep the user (see packaging/README.md); drop it so that this run
# sees postinst create it.
if getent passwd orio-agent >/dev/null; then deluser --quiet --system orio-agent >/dev/null 2>&1; fi
if getent group orio-agent >/dev/null; then delgroup --quiet --system orio-agent >/dev/null 2>&1; fi
rm -rf "$STATE"
pass "no orio-agent installed, no orio-agent user"

step "install $(basename "$deb")"
check "apt-get install $(basename "$deb")" run_apt install "$deb"
check "dpkg status is installed (ii)" test "$(status_of)" = ii

step "files"
check "/usr/bin/orio-agent -> $VENV/bin/orio-agent" \
    test "$(readlink /usr/bin/orio-agent)" = "$VENV/bin/orio-agent"
check "/usr/bin/orio-agent is executable" test -x /usr/bin/orio-agent
check "the venv's python is Debian's python3" test "$(readlink -f $VENV/bin/python)" = "$(readlink -f /usr/bin/python3)"
check "the unit at $UNIT" test -f "$UNIT"
check "usbserial and cdc_acm loaded at boot ($MODULES)" grep -qx usbserial "$MODULES"
check "$CONFIG is the example config (as in /usr/share/doc/orio-agent)" \
    cmp "$CONFIG" /usr/share/doc/orio-agent/config.example.toml
check "$CONFIG is root:orio-agent 0640" test "$(stat -c '%U:%G %a' "$CONFIG")" = "root:orio-agent 640"
check "$STATE is orio-agent:orio-agent 0750" test "$(stat -c '%U:%G %a' "$STATE")" = "orio-agent:orio-agent 750"
check "the unit is enabled (multi-user.target.wants)" test "$(readlink "$WANTS")" = "$UNIT"
check "no pip or setuptools in the venv" test -z "$(ls -d $VENV/lib/python3*/site-packages/{pip,setuptools} 2>/dev/null)"
check "the venv holds exactly requirements.lock + orio-agent" bash -c "
    diff <($VENV/bin/python -I -c 'from importlib.metadata import distributions as d
for x in d(): print(x.metadata[\"Name\"].lower().replace(\"_\", \"-\") + \"==\" + x.version)' | sort) \
         <( (grep -v '^#' /usr/share/doc/orio-agent/requirements.lock; echo orio-agent==$upstream) | sort)"
check "byte-code names the installed path" test "$($VENV/bin/python -I -c \
    'import agent.service.cli; print(agent.service.cli.main.__code__.co_filename)')" = \
    "$(ls -d $VENV/lib/python3*/site-packages)/agent/service/cli.py"
check "conffile registered: $CONFIG" bash -c \
    "dpkg-query -W -f='\${Conffiles}' orio-agent | grep -q '^ $CONFIG '"

step "user"
check "orio-agent is a system user (uid < 1000)" test "$(id -u orio-agent)" -lt 1000
check "orio-agent's shell is nologin" test "$(getent passwd orio-agent | cut -d: -f7)" = /usr/sbin/nologin
check "orio-agent's primary group is orio-agent" test "$(id -gn orio-agent)" = orio-agent
check "orio-agent is in dialout" bash -c "id -nG orio-agent | tr ' ' '\n' | grep -qx dialout"

step "the program"
marker=$work/marker
touch "$marker"
sleep 1
check "orio-agent --version prints orio-agent $upstream" test "$(orio-agent --version)" = "orio-agent $upstream"
secret=$(sed -n 's/^secret *= *"\([^"]*\)".*/\1/p' "$CONFIG")
check "the example config has a secret to hide" test -n "$secret"
set +e
out=$(orio-agent check-config "$CONFIG" 2>&1); rc=$?
set -e
check "orio-agent check-config $CONFIG exits 0" test "$rc" = 0
check "check-config does not print the secret" test "${out/"$secret"/}" = "$out"
check "check-config names the file" grep -q "^$CONFIG: OK" <<<"$out"
check "the orio-agent user can read the config (check-config as orio-agent)" \
    runuser -u orio-agent -- orio-agent check-config "$CONFIG"
check "other users cannot read the config" bash -c "! runuser -u nobody -- cat $CONFIG"
# The secret as a systemd credential instead ($CREDENTIALS_DIRECTORY/thing-secret).
grep -v '^secret *=' "$CONFIG" >"$work/nosecret.toml"
printf '%s\n' "$secret" >"$work/thing-secret"
set +e
out=$(CREDENTIALS_DIRECTORY=$work orio-agent check-config "$work/nosecret.toml" 2>&1); rc=$?
set -e
check "no secret in the file, the credential thing-secret: check-config exits 0" test "$rc" = 0
check "... and does not print it" test "${out/"$secret"/}" = "$out"
printf 'not = [valid\n' >"$work/bad.toml"
set +e
orio-agent check-config "$work/bad.toml" >/dev/null 2>&1; rc=$?
set -e
check "a bad config exits 78 (the unit's RestartPreventExitStatus=)" test "$rc" = 78
check "running it wrote nothing under $VENV (no byte-code compiled at run time)" \
    test -z "$(find "$VENV" -newer "$marker" -print -quit)"

step "the commissioning commands, against the installed agent"
set +e
orio-agent status --control "$work/none.sock" >/dev/null 2>&1; rc=$?
set -e
check "status with no agent running exits 3" test "$rc" = 3
set +e
out=$(orio-agent doctor --config "$CONFIG" 2>&1)
set -e
check "doctor checks the installed config" grep -q "^PASS  config: $CONFIG is valid" <<<"$out"
check "doctor finds the service user in dialout" grep -q "^PASS  service user" <<<"$out"
live=$(mktemp -d /tmp/orio-agent-live.XXXXXX)  # beside $work, which only root may enter
chmod 755 "$live"
sed -e 's|^path = "/var/lib/orio-agent/queue.db".*|path = ":memory:"|' \
    -e 's|^host = "mqtt.paas.oringnet.cloud"|host = "127.0.0.1"|' \
    -e 's|^port = 8083 .*|port = 9|' "$CONFIG" >"$live/config.toml"
chmod 644 "$live/config.toml"
install -d -o orio-agent -g orio-agent -m 0750 "$live/run"
runuser -u orio-agent -- orio-agent run --config "$live/config.toml" --control "$live/run/control.sock" \
    >"$live/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do [ -S "$live/run/control.sock" ] && break; sleep 0.1; done
check "the installed agent makes its control socket 0660, group orio-agent" \
    test "$(stat -c '%G %a' "$live/run/control.sock")" = "orio-agent 660"
check "status asks the installed agent (exit 0)" orio-agent status --control "$live/run/control.sock"
check "status --json says it is not connected to a broker that is not there" \
    bash -c "orio-agent status --json --control '$live/run/control.sock' | grep -q '\"connected\": false'"
set +e
runuser -u nobody -- orio-agent status --control "$live/run/control.sock" >/dev/null 2>&1; rc=$?
set -e
check "a user outside the orio-agent group cannot ask (exit 4)" test "$rc" = 4
kill -TERM "$agent_pid"; wait "$agent_pid" || true
check "the socket is removed when the agent stops" test ! -e "$live/run/control.sock"
rm -rf "$live"

step "the unit"
check "systemd-analyze verify $UNIT" systemd-analyze verify "$UNIT"
score=$(systemd-analyze security --offline=true "$UNIT" 2>/dev/null |
        sed -n 's/.*Overall exposure level for orio-agent.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security: exposure ${score:-?} <= 2.0" \
    python3 -c "import sys; sys.exit(not float('${score:-99}') <= 2.0)"

step "upgrade: the admin's config edits and the queue survive"
printf '\n# edited by the administrator\n' >>"$CONFIG"
runuser -u orio-agent -- sh -c "umask 077; echo queued >$STATE/queue.db"
dpkg-deb -R "$deb" "$work/pkg"
sed -i "s/^Version: .*/Version: $version+upgradetest/" "$work/pkg/DEBIAN/control"
dpkg-deb --root-owner-group -b "$work/pkg" "$work/upgrade.deb" >/dev/null
rm -rf "$work/pkg"
# No --force-conf*: had dpkg seen a conflict, it would ask, read EOF and fail here.
check "upgrade to $version+upgradetest (apt-get install)" run_apt install "$work/upgrade.deb"
check "installed version is $version+upgradetest" \
    test "$(dpkg-query -W -f='${Version}' orio-agent)" = "$version+upgradetest"
check "the edited $CONFIG is kept" grep -q '^# edited by the administrator' "$CONFIG"
check "no .dpkg-new / .dpkg-dist left beside it" test -z "$(ls /etc/orio-agent/*.dpkg-* 2>/dev/null)"
check "$CONFIG is still root:orio-agent 0640" test "$(stat -c '%U:%G %a' "$CONFIG")" = "root:orio-agent 640"
check "$STATE/queue.db is kept" grep -qx queued "$STATE/queue.db"

step "remove: the queue and the config stay"
check "apt-get remove orio-agent" run_apt remove orio-agent
check "dpkg status is rc (config files remain)" test "$(status_of)" = rc
check "$STATE/queue.db is still there" test -f "$STATE/queue.db"
check "$CONFIG is still there, with the edit" grep -q '^# edited by the administrator' "$CONFIG"
check "/usr/bin/orio-agent is gone" test ! -e /usr/bin/orio-agent
check "$VENV is gone" test ! -e "$VENV"
check "$UNIT is gone" test ! -e "$UNIT"
check "$MODULES is gone" test ! -e "$MODULES"

step "purge: the state and the config go"
check "apt-get purge orio-agent" run_apt purge orio-agent
check "dpkg no longer knows orio-agent" bash -c "! dpkg-query -W orio-agent 2>/dev/null | grep -q ."
check "$STATE is gone" test ! -e "$STATE"
check "$CONFIG is gone" test ! -e "$CONFIG"
check "/etc/orio-agent is gone" test ! -e /etc/orio-agent
check "no dpkg-statoverride left for $CONFIG" bash -c "! dpkg-statoverride --list $CONFIG"
check "no enablement or mask left in /etc/systemd/system" \
    test -z "$(find /etc/systemd/system -name 'orio-agent.service*' -print -quit)"
check "the orio-agent user is kept (documented; deluser --system orio-agent removes it)" \
    getent passwd orio-agent

step "size"
printf '%s: %s bytes (%s KiB); Installed-Size: %s KiB\n' "$(basename "$deb")" \
    "$(stat -c %s "$deb")" "$(( $(stat -c %s "$deb") / 1024 ))" "$(dpkg-deb -f "$deb" Installed-Size)"
printf 'build: %s s; install/upgrade/remove/purge checks: %s s\n' \
    "$(( built - started ))" "$(( $(date +%s) - built ))"

if [ "$failures" -gt 0 ]; then
    printf '\n%d check(s) failed\n' "$failures"
    exit 1
fi
printf '\nall checks passed\n'
