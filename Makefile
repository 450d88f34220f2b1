# The README's two commands: `make run` (set up + main job) and `make test` (set up + tests).
# Both install exactly requirements.lock into $(VENV); `make lock` regenerates the lock.
.PHONY: setup run test lint format check lock

VENV ?= $(or $(SLIMLINE_VENV),.venv)
export SLIMLINE_VENV := $(VENV)

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/slimline run

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench && $(VENV)/bin/ruff format --check src tests bench

format: setup
	$(VENV)/bin/ruff check --fix src tests bench && $(VENV)/bin/ruff format src tests bench

check: lint test

lock:
	bash scripts/lock.sh $(ARGS)
