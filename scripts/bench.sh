#!/usr/bin/env bash
# make bench: every benchmark; figures go to target/bench/results.md (copy them, with
# the command, into BENCHMARKS.md). `scripts/bench.sh plan demo` runs a subset (of plan,
# fake, demo, restore, aws, state, stage, serve, cow, sampler, proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
# The AWS benchmark compares against the aws CLI: install it beside the emulator.
[ -x .venv/bin/aws ] || .venv/bin/pip install -q --disable-pip-version-check awscli
exec python3 scripts/bench.py "$@"
