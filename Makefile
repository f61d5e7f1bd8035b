# Local dev and CI entry points. The services (Kafka, PostgreSQL, Redis on 127.0.0.1) are
# run by ops/stack.sh without Docker; see ops/README.md.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install up down status browser helm test test-fast lint chaos demo bench

install: $(VENV)/.installed

# pip runs again only when pyproject.toml is newer than the stamp of the last good install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,dashboard]'
	touch $@

# `sentiment init` runs the DB migrations and creates the Kafka topics.
up: install
	ops/stack.sh up
	$(BIN)/sentiment init

# The main job end to end: stack up, a model (trained briefly if none is registered), a worker,
# sample reviews in, labelled rows and trend counters out.
demo: up
	$(BIN)/sentiment demo

down:
	ops/stack.sh down

status:
	ops/stack.sh status

# The dashboard's browser test drives Debian's chromium (tests/test_dashboard_browser.py); `make test` installs
# it like .ci/run does, so a newcomer runs CI's suite instead of silently skipping that test.
CHROMIUM ?= $(or $(SENTIMENT_TEST_CHROMIUM),/usr/bin/chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

browser:
	@test -x $(CHROMIUM) || command -v apt-get >/dev/null || { echo "no chromium at $(CHROMIUM) and no apt-get:" \
	  "install chromium and set SENTIMENT_TEST_CHROMIUM=/path/to/chromium" >&2; exit 2; }
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# helm for tests/test_helm.py, built once from the Go module proxy into .stack/bin (ops/helm.sh).
helm:
	ops/helm.sh >/dev/null

# Every test (unit, integration against the stack, chaos); the 15 slowest are listed at the end.
test: up browser helm
	$(BIN)/pytest -q --durations=15 $(PYTEST_ARGS)

# Tests that need no service (`unit`, set by tests/conftest.py) and train nothing (not `slow`): under a
# minute, no `make up` needed.
test-fast: install helm
	$(BIN)/pytest -q -m "unit and not slow" $(PYTEST_ARGS)

# ruff, and the import-linter contracts in pyproject.toml (the one-way layers).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

chaos: up
	$(BIN)/pytest -q -m chaos $(PYTEST_ARGS)

bench: up
	$(BIN)/python bench/pipeline.py --events 2000 --json bench/results/pipeline.json
