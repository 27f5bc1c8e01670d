#!/usr/bin/env bash
# Installs what rehearse's demo and tests need on Debian/Ubuntu, idempotently:
#   - PostgreSQL server binaries (Debian's `postgresql` package) for the local provider,
#   - python3 (the demo shop and its suites are stdlib Python),
#   - with `--emulator`: moto[server] (the AWS API emulator) in ./.venv.
# Each step checks first and does nothing when the thing is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_emulator=0
[ "${1:-}" = "--emulator" ] && want_emulator=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="__none__"; fi
fi

apt_updated=0
apt_install() {
  if [ "$SUDO" = "__none__" ]; then
    echo "install-deps: need root (or sudo) to install: $*" >&2
    exit 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

have_pg_server() {
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ] && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if ! have_pg_server || ! command -v psql >/dev/null 2>&1 || ! command -v pg_dump >/dev/null 2>&1; then
  echo "install-deps: installing PostgreSQL server binaries (Debian package postgresql)"
  apt_install postgresql postgresql-client
fi

# Debian's postgresql package starts a system cluster; rehearse does not use it.
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "${CI:-}" ]; then
  true
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "install-deps: installing python3"
  apt_install python3 python3-venv
fi

if ! command -v setpriv >/dev/null 2>&1; then
  apt_install util-linux
fi

if [ "$want_emulator" -eq 1 ]; then
  if [ ! -x .venv/bin/moto_server ]; then
    echo "install-deps: installing moto[server] into .venv"
    if ! python3 -m venv .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv
      python3 -m venv .venv
    fi
    .venv/bin/pip install -q --disable-pip-version-check 'moto[server]>=5,<6' boto3
  fi
fi
echo "install-deps: ok"
