#!/usr/bin/env bash
# make bench: every benchmark; figures go to target/bench/results.md (copy them, with
# the command, into BENCHMARKS.md). `scripts/bench.sh plan demo` runs a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench.py "$@"
