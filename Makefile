# rehearse — the two commands:
#   make demo   build the tool and rehearse the demo shop (v2 passes, v3 fails) locally
#   make test   install what the tests need and run every test
#
# Everything is installed by these targets, idempotently (see scripts/install-deps.sh).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all build release deps test-deps demo test test-full bench fmt lint clean

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

test: test-deps
	$(CARGO) test --locked --no-fail-fast

# The same tests with their long statistical runs at full count (compare's twenty
# seeded repetitions of one release against itself).
test-full: test-deps
	REHEARSE_TEST_FULL=1 $(CARGO) test --locked --no-fail-fast

bench: test-deps release
	@scripts/bench.sh

fmt:
	$(CARGO) fmt

# Formatting, clippy with warnings as errors, and the direction of module dependencies.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@scripts/check-layers.sh

clean:
	$(CARGO) clean
	rm -rf .venv demo/backups demo/build
