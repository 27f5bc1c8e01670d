#!/usr/bin/env python3
"""Migrations suite: did the release's migrations land on the copy, data intact?

One check per migrations/*.sql file of the release (recorded in schema_migrations
under its file name without ".sql"), plus row-count sanity checks.

Environment:
  PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
                       libpq's connection settings for the copy (rehearse sets them for
                       a suite when the description has one database)
  RELEASE_DIR          the installed release directory, holding migrations/ (required)
  REHEARSE_JUNIT_PATH  where to write the JUnit XML (else argv[1], else ./migrations.xml)

Exit status 1 if any check failed, else 0.
"""

import os
import subprocess
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from junit import Suite  # noqa: E402  (the helper next to this file)

QUERY_TIMEOUT_SECONDS = 30
RELEASE_DIR = os.environ.get("RELEASE_DIR", "")


def query(sql):
    """Run one SQL statement with psql; return rows as lists of strings."""
    command = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
    proc = subprocess.run(command + ["-c", sql], capture_output=True, text=True,
                          timeout=QUERY_TIMEOUT_SECONDS)
    assert proc.returncode == 0, f"psql failed: {proc.stderr.strip()}"
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def release_migrations():
    assert RELEASE_DIR, "RELEASE_DIR is not set"
    directory = Path(RELEASE_DIR, "migrations")
    assert directory.is_dir(), f"{directory} is not a directory"
    files = sorted(directory.glob("*.sql"))
    assert files, f"{directory} holds no .sql files"
    return files


def recorded_versions():
    return {row[0] for row in query("select version from schema_migrations")}


def is_recorded(version, recorded):
    if isinstance(recorded, Exception):
        raise AssertionError(f"cannot read schema_migrations: {recorded}")
    assert version in recorded, f"migration {version} is not recorded in schema_migrations"


def table_has_rows(table):
    count = int(query(f"select count(*) from {table}")[0][0])
    assert count > 0, f"{table} is empty"


def main():
    suite = Suite("migrations")
    files = []

    def release_has_migrations():
        files.extend(release_migrations())

    suite.check("release has migrations", release_has_migrations)
    try:
        recorded = recorded_versions()
    except (AssertionError, OSError, subprocess.SubprocessError) as err:
        recorded = err
    for path in files:
        suite.check(f"{path.stem} is recorded", is_recorded, path.stem, recorded)
    for table in ("customers", "products", "orders", "order_items"):
        suite.check(f"{table} has rows", table_has_rows, table)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
