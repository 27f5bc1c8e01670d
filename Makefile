# rehearse — the two commands:
#   make demo   build the tool and rehearse the demo shop (v2 passes, v3 fails) locally
#   make test   install what the tests need and run every test (with cargo-nextest)
#
# Everything is installed by these targets, idempotently (see scripts/install-deps.sh).

CARGO ?= cargo
SHELL := /bin/bash
# The venv's tools after the system's own: cargo-nextest, when scripts/install-deps.sh
# installed it there.
export PATH := $(PATH):$(CURDIR)/.venv/bin

.PHONY: all build release deps test-deps test-build demo test tests-only test-full bench fmt lint lint-source clean

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --emulator

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# The demo uses the same (debug) build as the tests: one build of the AWS SDK, not two.
demo: deps build
	@scripts/demo.sh target/debug/rehearse

# The test runner is cargo-nextest (.config/nextest.toml), not `cargo test`: every test
# in a process of its own, four at a time, those that measure latency alone; JUnit in
# target/nextest/default/junit.xml. The integration tests are one binary (tests/all.rs).
# The demo's backups are made once before the tests start (tests/common: demo_backups).
# nextest runs no doc-tests: `cargo test --doc` runs them, when a doc comment has any.
define run-tests
	sh demo/backup/generate.sh
	sh demo/backup/generate-deploy.sh
	REHEARSE_DEMO_BACKUPS_MADE=1 $(CARGO) nextest run --locked --no-fail-fast
	if grep -rqE '^\s*//[/!]\s*```' src; then $(CARGO) test --locked --doc; fi
endef

# `make test` is every check: the lint and the tests. The test build is also the lint:
# this crate's own targets are compiled by clippy-driver (scripts/clippy-rustc), which
# compiles as rustc does and lints as `cargo clippy --all-targets -- -D warnings` does,
# so the dependencies (the AWS SDK's crates most of all) are compiled once, not checked
# a second time by clippy. Three things at once first: that build, the lint of the
# source (fmt, the layer and size checks), and what the tests need beyond the build
# (PostgreSQL, Chromium, the emulator, nextest), mostly a wait on downloads. Each one's
# output is printed whole when it ends. Then the tests, alone on the machine: some of
# them measure latency.
test:
	$(MAKE) -j3 --output-sync=target lint-source test-deps test-build
	$(MAKE) tests-only

tests-only: test-deps test-build
	$(run-tests)

# The tests' build, every target of the crate (benches included, as clippy's
# --all-targets), linted as it compiles. `cargo nextest run` then finds it fresh: the
# same profile, features and wrapper, exported to the tests' targets.
test-build tests-only test-full: export RUSTC_WORKSPACE_WRAPPER = $(CURDIR)/scripts/clippy-rustc
test-build:
	$(CARGO) test --locked --no-run --all-targets

# The same tests with their long statistical runs at full count: compare's twenty live
# repetitions of one release against itself, and all the judge's seeded draws (a tenth
# of them in `make test`).
test-full: export REHEARSE_TEST_FULL = 1
test-full: test-deps test-build
	$(run-tests)

bench: test-deps release
	@scripts/bench.sh

fmt:
	$(CARGO) fmt

# Formatting, clippy with warnings as errors, the direction of module dependencies, and
# the size of the code's units (functions up to 150 lines; files over 600 say why).
# Clippy checks in a target directory of its own (target/lint): a check's artifacts are
# not a build's, and a lint does not wait for cargo's lock on target/. (`make test` lints
# in its build instead: see `test`.)
lint: lint-source
	CARGO_TARGET_DIR=$(CURDIR)/target/lint $(CARGO) clippy --locked --all-targets -- -D warnings

lint-source:
	$(CARGO) fmt --check
	@scripts/check-layers.sh
	@scripts/check-size.sh

clean:
	$(CARGO) clean
	rm -rf .venv demo/backups demo/backups-deploy demo/build
