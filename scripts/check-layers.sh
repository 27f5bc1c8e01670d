#!/usr/bin/env bash
# Checks that module dependencies point one way (part of `make lint`):
#
#   commands, server → engine ← providers   (the engine owns the provider contract)
#   engine, providers → suites, report → plan → description → sys, secrets, style, diag, exit
#
# A layer may use what is below it, never what is above it or beside it where the
# table says so. Test-only code (`#[cfg(test)]` modules, `tests.rs`) may use the
# testkit; nothing else may. Prints each violation as FILE:LINE: TEXT and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
# forbid DIR REGEX WHY: no non-test line of a .rs file under DIR (or the file DIR.rs) matches.
forbid() {
    local dir=$1 pattern=$2 why=$3 files
    files=$(find "src/$dir" "src/$dir.rs" -name '*.rs' 2>/dev/null | grep -v '/tests\.rs$' || true)
    [ -n "$files" ] || return 0
    # Stop reading a file at its test module: what follows `#[cfg(test)]` is test code.
    local hits
    hits=$(awk -v pat="$pattern" '
        FNR == 1 { intest = 0 }
        /^#\[cfg\(test\)\]/ { intest = 1 }
        !intest && $0 ~ pat && $0 !~ /^[[:space:]]*\/\// { print FILENAME ":" FNR ": " $0 }
    ' $files)
    if [ -n "$hits" ]; then
        echo "layering: $why" >&2
        echo "$hits" >&2
        status=1
    fi
}

forbid engine      'crate::(providers|commands|testkit)' "the engine never names a provider or a command"
forbid providers   'crate::(commands|testkit)'           "providers do not use the commands"
forbid server      'crate::(commands|testkit)'           "the server is beside the commands, not above them"
forbid providers/aws 'providers::local|super::local'     "the AWS provider uses no local module"
forbid providers/local 'providers::aws|super::aws'       "the local provider uses no AWS module"
forbid suites      'crate::(engine|providers|commands)'  "suites are below the engine"
forbid report      'crate::(engine|providers|commands|suites)' "the report is below the engine"
forbid compare     'crate::(engine|providers|commands|suites)' "the judge is below the engine"
forbid plan        'crate::(engine|providers|commands|report|suites)' "the plan is below the engine"
forbid description 'crate::(engine|providers|commands|report|suites|plan)' "the description is the bottom of the run's path"
for low in sys secrets style diag exit; do
    forbid "$low" 'crate::(engine|providers|commands|report|suites|plan|description)' "$low is below everything that uses it"
done

# No command imports another command: each module of src/commands/ parses, picks a
# provider, calls the engine and renders; what they share is an edge helper, not a
# command. Allowed: what src/commands.rs itself defines (`super::{reporter, runtime,
# print_json, load_or_report, checked_state, aws_provider, ...}`) and the edge helper
# modules named in `edge_helpers` (commands/store.rs: which state store, fetching from
# it, opening journals mirrored to it; commands/edge/: a run, a teardown, a lock and a
# connection said as every command that needs one says it). Every other file of src/commands/ is a command,
# and naming it — `super::down`, `super::{reporter, stage}`, `crate::commands::run` —
# from another file of src/commands/ is refused. (A `use super::{` list spread over
# lines is read line by line: keep command imports, which are refused anyway, on one.)
edge_helpers="store edge"
commands=$(find src/commands -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' \
    | grep -vxF -f <(tr ' ' '\n' <<<"$edge_helpers") | sort | paste -sd'|' -)
if [ -n "$commands" ]; then
    forbid_in() {
        local pattern=$1 why=$2 hits
        hits=$(awk -v pat="$pattern" '
            FNR == 1 { intest = 0 }
            /^#\[cfg\(test\)\]/ { intest = 1 }
            !intest && $0 ~ pat && $0 !~ /^[[:space:]]*\/\// { print FILENAME ":" FNR ": " $0 }
        ' $(find src/commands -name '*.rs' | grep -v '/tests\.rs$'))
        if [ -n "$hits" ]; then
            echo "layering: $why" >&2
            echo "$hits" >&2
            status=1
        fi
    }
    forbid_in "(super|crate::commands)::([{]([^}]*[^[:alnum:]_])?)?($commands)([^[:alnum:]_]|\$)" \
        "a command imports another command (share through src/commands.rs or an edge helper: $edge_helpers)"
fi

# What the commands print quotes strangers (the state store, releases): it goes through
# the terminal sanitizer (outln!/errln!/err!, see src/commands.rs). A raw print is for
# exact output and says why with a `// raw:` comment on its line.
raw=$(awk '
    FNR == 1 { intest = 0 }
    /^#\[cfg\(test\)\]/ { intest = 1 }
    !intest && /(^|[^[:alnum:]_!])e?print(ln)?!\(/ && !/\/\/ raw:/ && $0 !~ /^[[:space:]]*\/\// { print FILENAME ":" FNR ": " $0 }
' src/commands.rs $(find src/commands -name '*.rs'))
if [ -n "$raw" ]; then
    echo "terminal: a raw print in the commands (use outln!/errln!/err!, or mark exact output // raw: why)" >&2
    echo "$raw" >&2
    status=1
fi

# The fake cloud ships in no default build: its module is compiled for tests only.
if ! grep -q '^#\[cfg(any(test, feature = "testkit"))\]$' src/lib.rs; then
    echo "layering: src/lib.rs must compile the testkit only for tests (cfg(any(test, feature = \"testkit\")))" >&2
    status=1
fi
# README's module map lists exactly the files of src/.
if ! python3 - <<'PY'
import pathlib, re, sys
readme = pathlib.Path("README.md").read_text()
block = readme.split("<!-- module map", 1)[1].split("```", 2)[1]
listed = {l.split()[0] for l in block.splitlines() if l.strip() and not l.startswith("#")}
actual = {str(p.relative_to("src")) for p in pathlib.Path("src").rglob("*.rs")}
missing, stale = sorted(actual - listed), sorted(listed - actual)
for f in missing:
    print(f"layering: README's module map does not list src/{f}", file=sys.stderr)
for f in stale:
    print(f"layering: README's module map lists src/{f}, which does not exist", file=sys.stderr)
sys.exit(1 if missing or stale else 0)
PY
then
    status=1
fi
# Typed handles: a resource's handle is its provider's type, and only that provider
# reads it (`Handle::decode` into its own type). The engine journals handles and hands
# them back, and never reads one: no JSON value, no key lookup, no decode under
# src/engine/ outside test code. The Handle type itself holds the value (its lines say
# so with `// handle:`); JSON that is no handle (a load tool's own figures in
# compare.json) says so with `// json:` and why.
handles=$(awk '
    FNR == 1 { intest = 0 }
    /^#\[cfg\(test\)\]/ { intest = 1 }
    !intest && $0 !~ /^[[:space:]]*\/\// && $0 !~ /\/\/ (handle|json):/ \
        && /serde_json::(Value|Map)|[^A-Za-z_]Value::|\.get\("|\.pointer\(|\.as_object\(|\.decode(::<[^>]*>)?\(|\["[A-Za-z_]+"\]/ {
        print FILENAME ":" FNR ": " $0
    }
' src/engine.rs $(find src/engine -name '*.rs' ! -name tests.rs))
if [ -n "$handles" ]; then
    echo "layering: the engine reads a handle's fields (only its provider may: Handle::decode into the provider's type)" >&2
    echo "$handles" >&2
    status=1
fi
exit $status
