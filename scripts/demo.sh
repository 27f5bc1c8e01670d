#!/usr/bin/env bash
# The demo: rehearse the shop's release v2 (passes) and v3 (its migration fails on
# production's data) on this machine, compare v2-slow with v2, rehearse the deploy of
# v4-blocking over v2 under load (its index locks the event log: fails on lock waits),
# then show the verdicts.
# Usage: scripts/demo.sh [path/to/rehearse]   (make demo builds it first)
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/rehearse}
export REHEARSE_STATE_DIR=${REHEARSE_STATE_DIR:-$PWD/target/demo-state}

start=$(date +%s.%N)
sh demo/backup/generate.sh || exit 1
sh demo/backup/generate-deploy.sh || exit 1

# Bold only on a terminal, and not when NO_COLOR is set (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
banner() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$plain"; }

banner "rehearse run environments/demo.yaml --release v2"
"$bin" run environments/demo.yaml --release v2
v2=$?

banner "rehearse run environments/demo.yaml --release v3"
"$bin" run environments/demo.yaml --release v3
v3=$?
# It must fail at its migration (the install step), not anywhere else.
if [ "$v3" -eq 1 ]; then
  last=$(ls -t "$REHEARSE_STATE_DIR/runs" | head -n 1)
  if ! python3 -c 'import json, sys
f = json.load(open(sys.argv[1])).get("failure") or {}
sys.exit(0 if f.get("phase") == "install" and "migration" in f.get("message", "") else 1)' \
      "$REHEARSE_STATE_DIR/runs/$last/report/report.json"; then
    echo "demo: v3 failed, but not at its migration" >&2
    v3=wrong
  fi
fi

banner "rehearse compare environments/demo.yaml --baseline v2 --candidate v2-slow"
compared=$("$bin" compare environments/demo.yaml --baseline v2 --candidate v2-slow)
slow=$?
printf '%s\n' "$compared"
# The comparison must fail for the right reason: GET /products judged slower (High),
# not a side that was never built.
if [ "$slow" -eq 1 ] && ! printf '%s\n' "$compared" | grep -Eq '^  High +latency GET /products:'; then
  echo "demo: the comparison failed, but not on latency GET /products" >&2
  slow=wrong
fi

banner "rehearse run environments/deploy.yaml --from v2 --release v4-blocking"
"$bin" run environments/deploy.yaml --from v2 --release v4-blocking
blocking=$?
# It must fail on the traffic's lock waits, not anywhere else. On a slow machine the
# index takes longer than the shop's 10 s query timeout and the requests that waited
# fail too: the error rate may break beside the lock waits, nothing else may.
if [ "$blocking" -eq 1 ]; then
  last=$(ls -t "$REHEARSE_STATE_DIR/runs" | head -n 1)
  if ! python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
d = r.get("deploy") or {}
broken = [l for l in d.get("limits", []) if not l["passed"]]
names = {l["name"] for l in broken}
if "max_lock_wait" in names and names <= {"max_lock_wait", "max_error_rate"}:
    sys.exit(0)
for l in broken:
    print("demo:   broken: %s: %s" % (l["name"], l["reason"]), file=sys.stderr)
if r.get("failure"):
    print("demo:   failure: %s" % r["failure"].get("message", ""), file=sys.stderr)
sys.exit(1)' \
      "$REHEARSE_STATE_DIR/runs/$last/report/report.json"; then
    echo "demo: v4-blocking failed, but not on its lock waits (run $last)" >&2
    blocking=wrong
  fi
fi

end=$(date +%s.%N)
verdict() { case $1 in 0) echo "passed (exit 0)";; 1) echo "FAILED (exit 1)";; wrong) echo "FAILED, but not where it should";; *) echo "error (exit $1)";; esac; }
banner "verdicts"
echo "release v2: $(verdict $v2)   — its migrations work on the copy of production"
echo "release v3: $(verdict $v3)   — its unique index trips over production's duplicate emails"
echo "v2-slow against v2: $(verdict $slow)   — the same traffic on twin copies: GET /products is slower"
echo "deploy of v4-blocking over v2: $(verdict $blocking)   — its CREATE INDEX held the event log while requests waited"
echo "  (the same index CONCURRENTLY passes: rehearse run environments/deploy.yaml --from v2 --release v4-concurrent)"
printf 'demo took %.1fs (after the build); reports are under %s/runs\n' "$(echo "$end - $start" | bc 2>/dev/null || python3 -c "print($end-$start)")" "$REHEARSE_STATE_DIR"

if [ "$v2" = 0 ] && [ "$v3" = 1 ] && [ "$slow" = 1 ] && [ "$blocking" = 1 ]; then
  echo "demo: as expected — the rehearsal caught v3, the comparison v2-slow, and the deploy rehearsal v4-blocking's locks, before production did."
  exit 0
fi
echo "demo: unexpected verdicts (v2 should pass, v3 should fail at its migration, v2-slow on latency GET /products, v4-blocking on its lock waits)" >&2
exit 1
