#!/bin/sh
# Assembles the demo shop's release artifacts into demo/build/releases/VERSION/:
# the service (shop/app.py and its database client shop/pg.py), its migration runner (shop/migrate.sh), the first N
# migrations from migrations/ (N from releases.txt) and a named extra one (`+FILE`), a
# VERSION file and, for a release with a deliberate slowdown, a SLOW file (PATH
# MILLISECONDS). Idempotent and
# fast; rehearse copies (or unpacks) such a directory into each run.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build/releases"
mkdir -p "$out"
grep -v '^#' "$here/releases.txt" | while read -r version count slow_path slow_ms; do
    [ -n "$version" ] || continue
    dest="$out/$version"
    tmp="$out/.$version.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp/migrations"
    cp "$here/shop/app.py" "$here/shop/pg.py" "$here/shop/migrate.sh" "$tmp/"
    printf '%s\n' "$version" > "$tmp/VERSION"
    ls "$here/migrations/"*.sql | sort | head -n "$count" | while read -r m; do cp "$m" "$tmp/migrations/"; done
    case "${slow_path:-}" in
        +*) cp "$here/migrations/${slow_path#+}" "$tmp/migrations/" ;;
        ?*) printf '%s %s\n' "$slow_path" "$slow_ms" > "$tmp/SLOW" ;;
    esac
    rm -rf "$dest"
    mv "$tmp" "$dest"
done
