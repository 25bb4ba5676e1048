# agent-operator — everyday commands. Everything runs from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXAMPLE ?= examples/agenttask-dag.yaml

.PHONY: help venv lock run test test-fast bench faults lint format typecheck crds chart bins images cluster-up cluster-down kind-e2e clean

help:
	@echo "make run    - set up, then run $(EXAMPLE) with the embedded default (no cluster, SQLite)"
	@echo "make test   - set up, then run every test tier (lint and types included)"
	@echo "make bench  - the operator's hand-off latency, API and store writes per step, memory at 1,000 tasks"
	@echo "make faults - fault figures (docs/reliability.md), then FUZZ_EXAMPLES (100) hostile inputs per kind"
	@echo "make lock   - regenerate requirements/*.txt (LOCK_FLAGS=--upgrade: newest versions)"
	@echo "make crds   - regenerate crds/ and the chart's generated files from the pydantic models"
	@echo "make kind-e2e - where Docker exists: a kind cluster, both images, the chart, the e2e suite"
	@echo "make bins   - build the pinned control-plane binaries and helm (cached in ~/.cache)"
	@echo "make images - build the images with podman into the local kubelet's image store"
	@echo "make cluster-up / cluster-down - a local control plane and kubelet for trying things"

# The dev lock, then the project itself (editable, no dependencies of its own choosing).
$(BIN)/agent-operator: pyproject.toml requirements/dev.txt requirements/build.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	PIP_CONSTRAINT=requirements/build.txt $(BIN)/pip install --quiet --no-deps -e .
	@touch $@

venv: $(BIN)/agent-operator

# Locks for every platform: dev (the venv), the operator's and the runtime's images, and the
# build backend. Each later lock is constrained by the one before, so they agree on versions.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 \
	--annotation-style line --custom-compile-command 'make lock' $(LOCK_FLAGS)

lock: venv
	$(UV_COMPILE) --extra dev pyproject.toml -o requirements/dev.txt
	$(UV_COMPILE) -c requirements/dev.txt pyproject.toml -o requirements/operator.txt
	$(UV_COMPILE) -c requirements/operator.txt runtime/pyproject.toml -o requirements/runtime.txt
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(UV_COMPILE) - -o requirements/build.txt

run: venv
	$(BIN)/agent-operator run -f $(EXAMPLE)

test: venv bins images
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q tests/core

bench: venv bins images
	$(BIN)/python -m bench.operator_bench

FUZZ_EXAMPLES ?= 100

faults: venv bins images
	$(BIN)/python -m bench.faults
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s -p no:cacheprovider tests/e2e/test_fuzz.py

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

cluster-up: venv bins images
	$(BIN)/python hack/cluster.py up

cluster-down: venv
	$(BIN)/python hack/cluster.py down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
