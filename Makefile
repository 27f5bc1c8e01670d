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

.PHONY: all build release deps test-deps test-build demo test tests-only test-full bench fmt lint clean

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
	REHEARSE_DEMO_BACKUPS_MADE=1 $(CARGO) nextest run --locked --no-fail-fast
	if grep -rqE '^\s*//[/!]\s*```' src; then $(CARGO) test --locked --doc; fi
endef

# `make test` is every check: the lint (fmt, clippy, the layer and size checks) and the
# tests. Three things at once first: clippy checks in target/lint while the tests build in
# target/ (on two cores each leaves the other a core for much of the time), and what the
# tests need beyond the build (PostgreSQL, Chromium, the emulator, nextest) is installed
# meanwhile, mostly a wait on downloads. Each one's output is printed whole when it ends.
# Then the tests, alone on the machine: some of them measure latency.
test:
	$(MAKE) -j3 --output-sync=target lint test-deps test-build
	$(MAKE) tests-only

tests-only: test-deps test-build
	$(run-tests)

# What `cargo nextest run` builds (the same profile and features, so it finds it fresh).
test-build:
	$(CARGO) test --locked --no-run

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
# not a build's anyway, and so `make test` checks while the tests build instead of
# waiting for cargo's lock on target/.
lint:
	$(CARGO) fmt --check
	CARGO_TARGET_DIR=$(CURDIR)/target/lint $(CARGO) clippy --locked --all-targets -- -D warnings
	@scripts/check-layers.sh
	@scripts/check-size.sh

clean:
	$(CARGO) clean
	rm -rf .venv demo/backups demo/build
