#!/bin/sh
# Apply this release's database migrations: POSIX sh and psql only.
#
# Runs migrations/NNNN_name.sql in file-name order, skipping the ones already recorded
# in schema_migrations(version, applied_at) where version is the file name without
# ".sql". Each file runs in its own transaction together with the insert that records
# it, so a failed migration leaves neither a half-applied schema nor a record — except
# a file with a line `-- migrate: no-transaction` (what CREATE INDEX CONCURRENTLY
# needs): it runs statement by statement, and is recorded once it has passed.
#
# Environment:
#   PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
#                     libpq's connection settings (psql reads them: no password on a
#                     command line, where every user of the machine could read it)
#   REHEARSE_RELEASE  optional; only shown in the summary line
#
# Exit status 0 when every migration is applied. On failure, exit status 1 and stderr
# reads "migration migrations/<file> failed:" followed by psql's error output.
set -eu

cd "$(dirname "$0")"

run_psql() {
    psql -X -q -v ON_ERROR_STOP=1 "$@"
}

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

if ! applied=$(run_psql -A -t \
        -c "set client_min_messages = warning" \
        -c "create table if not exists schema_migrations (version text primary key, applied_at timestamptz not null default now())" \
        -c "select version from schema_migrations order by version" 2>"$errors"); then
    echo "migrate: cannot read schema_migrations:" >&2
    cat "$errors" >&2
    exit 1
fi

done_count=0
skipped_count=0
for file in migrations/*.sql; do
    [ -e "$file" ] || continue
    version=$(basename "$file" .sql)
    if printf '%s\n' "$applied" | grep -qx -- "$version"; then
        skipped_count=$((skipped_count + 1))
        continue
    fi
    echo "applying $file"
    single="--single-transaction"
    if grep -qx -- '-- migrate: no-transaction' "$file"; then single=""; fi
    # "-f -" reads the recording insert from stdin, where psql interpolates :'version'.
    if ! echo "insert into schema_migrations (version) values (:'version');" |
            run_psql $single -v version="$version" -f "$file" -f - \
                >/dev/null 2>"$errors"; then
        echo "migration $file failed:" >&2
        cat "$errors" >&2
        exit 1
    fi
    cat "$errors" >&2    # notices and warnings, if any
    echo "applied $version"
    done_count=$((done_count + 1))
done

echo "migrate: release ${REHEARSE_RELEASE:-$(cat VERSION 2>/dev/null || echo unknown)}:" \
    "$done_count applied, $skipped_count already applied"
