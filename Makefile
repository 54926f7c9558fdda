# Trigger plane: `make run` starts everything locally, `make test` runs the suite.
# Only python3 and make are assumed; everything else is installed into .venv from PyPI.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run chromium test test-browser test-unit test-integration test-e2e test-faults lint format typecheck bench bench-runner bench-quick bench-scheduler bench-history bench-all bench-faststream asyncapi bench-flood bench-fairness clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its pinned dependencies (and the `tp` CLI)

run: $(STAMP) ## Start NATS and all five services locally (Ctrl-C stops everything)
	$(BIN)/python -m services

# The console's browser tests drive the system's Chromium. On a fresh Debian machine, as root,
# Debian's package is installed once; otherwise say what to do (the tests fail without it).
CHROMIUM_FOUND = command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
chromium: ## Make sure a Chromium is installed for the browser tests (apt-get as root, once)
	@if $(CHROMIUM_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the console's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "No chromium found: the console's browser tests need one (sudo apt-get install chromium)" >&2; \
	fi

test: $(STAMP) chromium ## Run the whole test suite against a real nats-server (fault drills included)
	$(BIN)/python -m pytest tests

test-browser: $(STAMP) chromium ## Run the console's browser tests (Chromium, the whole stack)
	$(BIN)/python -m pytest tests/e2e/test_console.py

test-unit: $(STAMP) ## Run the unit tests only (no NATS)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP) ## Run the integration tests (a real nats-server per session)
	$(BIN)/python -m pytest tests/integration

test-e2e: $(STAMP) ## Run the end-to-end tests (the whole stack as processes)
	$(BIN)/python -m pytest tests/e2e

test-faults: $(STAMP) ## Run the fault drills (kills, pauses, NATS restarts; a few minutes)
	$(BIN)/python -m pytest tests/faults

lint: $(STAMP) ## Check style with ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## Format and fix with ruff
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on contracts/, shared/ and cli/
	$(BIN)/mypy

bench: $(STAMP) ## Load POST /trigger/{flow_id} next to a bare Litestar+JetStream baseline
	$(BIN)/python -m bench.trigger_api

bench-runner: $(STAMP) ## No-op runs/s with 1 and 2 runners next to a bare ack-only consumer
	$(BIN)/python -m bench.runner_throughput

bench-runner-pairs: $(STAMP) ## This checkout's runner against OTHER's (say, a git worktree of an earlier commit), in turn
	$(BIN)/python -m bench.runner_pairs $(OTHER) $(BENCH_ARGS)

bench-fairness: $(STAMP) ## B's echo latency, idle and while A queues 32 x sleep 20 on the same runner
	$(BIN)/python -m bench.fairness $(BENCH_ARGS)

bench-quick: $(STAMP) ## Smoke the benchmark (3 s per run)
	$(BIN)/python -m bench.trigger_api --quick

bench-history: $(STAMP) ## Run history at 1k vs 100k runs (BENCH_ARGS=--million for 1M): list/stats p99, rebuild, ingest, RSS
	$(BIN)/python -m bench.history $(BENCH_ARGS)

bench-flood: $(STAMP) ## Valid POST /trigger req/s undisturbed vs under a flood of forged keys (BENCH_ARGS=--unprotected also without the limits)
	$(BIN)/python -m bench.forged_keys $(BENCH_ARGS)

bench-scheduler: $(STAMP) ## 100,000 schedules on one scheduler (lag, RSS, CPU), a 10,000 herd, next to croniter+heapq
	$(BIN)/python -m bench.scheduler

bench-all: $(STAMP) ## Every benchmark in turn, then one table: stage, ours, bare, ratio, target (about 10 minutes)
	$(BIN)/python -m bench.all

bench-faststream: $(STAMP) ## A FastStream pull subscriber's CPU per message next to bare nats-py and our runner's per run
	$(BIN)/python -m bench.faststream_consumer $(BENCH_ARGS)

asyncapi: $(STAMP) ## Regenerate contracts/asyncapi.json (AsyncAPI 3) from contracts/
	$(BIN)/python -m contracts.asyncapi

clean: ## Remove the virtualenv and local NATS data
	rm -rf $(VENV) .data
