# agent-operator — everyday commands. Everything runs from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXAMPLE ?= examples/agenttask-dag.yaml

.PHONY: help venv run test test-fast bench lint format typecheck crds chart bins images cluster-up cluster-down kind-e2e clean

help:
	@echo "make run    - set up, then run $(EXAMPLE) with the embedded default (no cluster, SQLite)"
	@echo "make test   - set up, then run every test tier (lint and types included)"
	@echo "make bench  - the operator's hand-off latency, API and store writes per step, memory at 1,000 tasks"
	@echo "make crds   - regenerate crds/ and the chart's generated files from the pydantic models"
	@echo "make kind-e2e - where Docker exists: a kind cluster, both images, the chart, the e2e suite"
	@echo "make bins   - build the pinned control-plane binaries and helm (cached in ~/.cache)"
	@echo "make images - build the images with podman into the local kubelet's image store"
	@echo "make cluster-up / cluster-down - a local control plane and kubelet for trying things"

$(BIN)/agent-operator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/agent-operator

run: venv
	$(BIN)/agent-operator run -f $(EXAMPLE)

test: venv bins images
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q tests/core

bench: venv bins
	$(BIN)/python -m bench.operator_bench

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

crds: venv
	$(BIN)/python -m agent_operator.crdgen crds
	$(BIN)/python -m agent_operator.chartgen charts/agent-operator

chart: venv
	$(BIN)/python -m agent_operator.chartgen charts/agent-operator

kind-e2e: venv bins
	bash hack/kind-e2e.sh

bins:
	bash hack/build-binaries.sh >/dev/null

images:
	bash hack/install-tools.sh
	$(PYTHON) hack/images.py

cluster-up: venv bins
	$(BIN)/python hack/cluster.py up

cluster-down: venv
	$(BIN)/python hack/cluster.py down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
