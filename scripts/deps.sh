#!/bin/sh
# Installs exactly the Debian packages taylorscope needs (make deps).
# Idempotent: installs nothing when everything is present. Needs root (or sudo).
# --check: only report, exit 1 when something is missing.
set -eu

PACKAGES="build-essential pkg-config \
libnng-dev nng-utils \
libmsgpack-dev \
libsqlite3-dev sqlite3 \
libncurses-dev \
libopenblas-dev \
tmux"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "deps: all packages present"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "deps: missing:$missing" >&2
    exit 1
fi

echo "deps: missing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "deps: must run as root to install:$missing" >&2
        echo "deps: run 'sudo make deps' or install them with apt-get" >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO apt-get install -y --no-install-recommends $missing
echo "deps: installed:$missing"
