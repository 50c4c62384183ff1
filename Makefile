# podckpt: every developer task is a target here; `make help` lists them.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: help setup demo test lint typecheck unit
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## install Debian packages and the pinned Python dependencies (.venv)
	hack/setup.sh

demo: ## the main job: two-node cluster + operator + a labelled workload that resumes on the other node after a drain (hack/demo.sh)
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

.PHONY: images chart lock
REGISTRY ?= ghcr.io/podckpt
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images: setup ## build the operator and bundle images and push them: make images REGISTRY=host[:port][/path] TAG=t
	$(VENV)/python -m podckpt.devtools.publish --registry $(REGISTRY) --tag $(TAG)

chart: setup ## helm lint + helm template of charts/podckpt (helm is built once, cached)
	$(VENV)/pytest tests/chart -q

lock: setup ## rewrite requirements*.lock from pyproject.toml (exact versions with hashes)
	$(VENV)/python -m pip install -q uv==0.13.8
	$(VENV)/uv pip compile pyproject.toml --extra operator --extra dev --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --no-header \
	    --annotation-style line -o requirements.lock
	$(VENV)/uv pip compile pyproject.toml --extra operator --constraint requirements.lock \
	    --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	    --no-header --annotation-style line -o requirements-operator.lock

.PHONY: bundle bundle-image cluster-up cluster-down bench
bundle: setup ## build (or reuse) the self-contained agent bundle; prints its directory
	$(VENV)/python -m podckpt.bundle build

bundle-image: setup ## the init-container image (OCI layout via umoci) carrying the bundle
	$(VENV)/python -m podckpt.bundle image --layout _artifacts/bundle-image

cluster-up: setup ## a local single-node Kubernetes (hack/cluster.sh up)
	hack/cluster.sh up

cluster-down: ## stop everything cluster-up started
	hack/cluster.sh down

bench: setup ## every benchmark; each rewrites its own section of docs/benchmarks.md
	$(VENV)/python bench/agent_checkpoint.py
	$(VENV)/python bench/bundle.py
	$(VENV)/python bench/cluster_setup.py
	$(VENV)/python bench/webhook_latency.py
