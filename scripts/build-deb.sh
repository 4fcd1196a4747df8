#!/usr/bin/env bash
# Builds the orio-agent .deb for this machine's architecture (Debian 12, as root):
#   scripts/build-deb.sh        ->  dist/orio-agent_<version>_<arch>.deb
# Installs the build dependencies from Debian first (debian/control's Build-Depends:
# dh-virtualenv, debhelper, python3-venv, build-essential) when they are missing, then
# builds in a copy of the source under build/deb/, so the working tree is left as it is.
# Python dependencies come from PyPI at the exact versions of packaging/requirements.lock.
# Other architectures: run this on the target (or in an arm64/armhf chroot under qemu);
# see packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'build-deb: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs the build dependencies with apt-get)"

# The upstream version in debian/changelog must be the one pyproject.toml builds.
upstream=$(awk -F'"' '/^\[project\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {print $2; exit}' pyproject.toml)
[ -n "$upstream" ] || die "no [project] version in pyproject.toml"
changelog_version=$(sed -n '1s/^orio-agent (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[ "${changelog_version%-*}" = "$upstream" ] || die "packaging/debian/changelog says \
$changelog_version but pyproject.toml says $upstream: add a changelog entry (dch -v $upstream-1)"

# A clean copy of what the package is built from: no .venv, caches, run/ or egg-info.
build=build/deb
src=$build/orio-agent-$upstream
rm -rf "$build"
mkdir -p "$src"
tar -c --exclude=__pycache__ --exclude='*.pyc' \
    agent pyproject.toml README.md config.example.toml systemd \
    packaging/requirements.lock packaging/build-constraints.txt packaging/README.md |
    tar -x -C "$src"
cp -a packaging/debian "$src/debian"

export DEBIAN_FRONTEND=noninteractive
if ! command -v dpkg-checkbuilddeps >/dev/null || ! (cd "$src" && dpkg-checkbuilddeps) 2>/dev/null; then
    log "installing build dependencies"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
    apt-get build-dep -y -qq "./$src" >/dev/null
fi

arch=$(dpkg --print-architecture)
log "building orio-agent $changelog_version for $arch (log: $build/build.log)"
started=$(date +%s)
# A clean environment for pip and python: nothing from an activated venv leaks in.
if ! (cd "$src" && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME -u PIP_REQUIRE_VIRTUALENV \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        dpkg-buildpackage --build=binary --no-sign) >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2
    die "dpkg-buildpackage failed (whole log: $build/build.log)"
fi

deb=orio-agent_${changelog_version}_${arch}.deb
[ -f "$build/$deb" ] || die "expected $build/$deb, found: $(ls "$build")"
mkdir -p dist
rm -f dist/orio-agent_*_"$arch".deb
cp "$build/$deb" dist/
log "built dist/$deb in $(( $(date +%s) - started )) s"
echo "$root/dist/$deb"
