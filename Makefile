# The README's two commands: `make run` (set up + main job) and `make test` (set up + tests).
.PHONY: setup run test lint format check

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/slimline run

test: setup
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check src tests bench && .venv/bin/ruff format --check src tests bench

format: setup
	.venv/bin/ruff check --fix src tests bench && .venv/bin/ruff format src tests bench

check: lint test
