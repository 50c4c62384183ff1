# podckpt: every developer task is a target here; `make help` lists them.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: help setup demo test lint typecheck unit
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## install Debian packages and the pinned Python dependencies (.venv)
	hack/setup.sh

demo: ## the main job: checkpoint a running process with CRIU and restore it
	hack/demo.sh

test: ## everything CI runs: lint, types, layering, unit and real-part tests
	hack/test.sh

lint: setup ## ruff (lint + format check) and the import-layering contract
	$(VENV)/ruff check src tests bench
	$(VENV)/ruff format --check src tests bench
	$(VENV)/lint-imports

typecheck: setup ## mypy strict
	$(VENV)/mypy

unit: setup ## fast tests that need no root, CRIU or cluster
	$(VENV)/pytest tests/unit
