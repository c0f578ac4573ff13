# Two commands for a fresh machine: `make run` (set up + the main job) and `make test`.
# A GPU user installs another torch first: make run TORCH_SPEC="torch==2.13.0 --index-url ..."
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
export WANDB_MODE ?= offline

.PHONY: setup run test test-all lint bench

$(BIN)/.attnlab-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: anything that depends on it would otherwise pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.attnlab-installed

# The main job: a 2-run ablation sweep (positional sinusoidal vs none on `reverse`), then its report
# table and plots (docs/sweeps.md). The report runs even if a job failed; the sweep's status is kept.
run: setup
	$(BIN)/attnlab-train -m sweep=demo; status=$$?; \
	$(BIN)/attnlab-report outputs/demo/multiruns/latest && exit $$status

test: setup
	$(BIN)/pytest -q -m "not slow"

test-all: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests

# attnlab against torch.nn.Transformer and Hugging Face Marian (the bench extra), same process;
# prints the tables and writes bench.json (docs/performance.md). Overrides: make bench BENCH_ARGS="repeats=10"
$(BIN)/.attnlab-bench-installed: $(BIN)/.attnlab-installed
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(BIN)/.attnlab-bench-installed
	$(BIN)/attnlab-bench $(BENCH_ARGS)
