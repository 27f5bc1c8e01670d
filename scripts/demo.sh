#!/usr/bin/env bash
# The demo: rehearse the shop's release v2 (passes) and v3 (its migration fails on
# production's data) on this machine, then show both verdicts.
# Usage: scripts/demo.sh [path/to/rehearse]   (make demo builds it first)
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/rehearse}
export REHEARSE_STATE_DIR=${REHEARSE_STATE_DIR:-$PWD/target/demo-state}

start=$(date +%s.%N)
sh demo/backup/generate.sh || exit 1

# Bold only on a terminal, and not when NO_COLOR is set (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
banner() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$plain"; }

banner "rehearse run environments/demo.yaml --release v2"
"$bin" run environments/demo.yaml --release v2
v2=$?

banner "rehearse run environments/demo.yaml --release v3"
"$bin" run environments/demo.yaml --release v3
v3=$?

banner "rehearse compare environments/demo.yaml --baseline v2 --candidate v2-slow"
"$bin" compare environments/demo.yaml --baseline v2 --candidate v2-slow
slow=$?

end=$(date +%s.%N)
verdict() { case $1 in 0) echo "passed (exit 0)";; 1) echo "FAILED (exit 1)";; *) echo "error (exit $1)";; esac; }
banner "verdicts"
echo "release v2: $(verdict $v2)   — its migrations work on the copy of production"
echo "release v3: $(verdict $v3)   — its unique index trips over production's duplicate emails"
echo "v2-slow against v2: $(verdict $slow)   — the same traffic on twin copies: GET /products is slower"
printf 'demo took %.1fs (after the build); reports are under %s/runs\n' "$(echo "$end - $start" | bc 2>/dev/null || python3 -c "print($end-$start)")" "$REHEARSE_STATE_DIR"

if [ "$v2" -eq 0 ] && [ "$v3" -eq 1 ] && [ "$slow" -eq 1 ]; then
  echo "demo: as expected — the rehearsal caught v3, and the comparison v2-slow, before production did."
  exit 0
fi
echo "demo: unexpected verdicts (v2 should pass, v3 and v2-slow should fail)" >&2
exit 1
