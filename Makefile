# Two commands for a fresh machine: `make run` (set up + the main job) and `make test`.
# A GPU user installs another torch first: make run TORCH_SPEC="torch==2.13.0 --index-url ..."
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# export: tests/test_export.py runs the exported models in transformers and CTranslate2.
EXTRAS ?= dev,export
# Every Python dependency (torch aside: TORCH_SPEC) at the versions the suite passed with; `make lock` refreshes it.
LOCK ?= requirements.lock
LATEST_VENV ?= .venv-latest
export WANDB_MODE ?= offline

.PHONY: setup run test test-all test-slurm lint bench lock test-latest

$(BIN)/.attnlab-installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: anything that depends on it would otherwise pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
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

# Sweeps through a real single-node SLURM (tests/slurm, docs/cluster.md): the tests start munged, slurmctld
# and slurmd (scripts/slurm/local_cluster.py, state in a temporary folder) and stop them at the end.
# Needs root and Debian's packages: apt-get install -y slurm-wlm munge. About 4 minutes on 2 cores.
test-slurm: setup
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
	  { echo "make test-slurm needs SLURM and munge: apt-get install -y slurm-wlm munge (as root)" >&2; exit 2; }
	nice -n 15 $(BIN)/pytest -q -m slow tests/slurm

# The suite against the newest releases of every dependency (no lock), in a separate venv, so drift shows
# here before a user meets it. Not part of CI.
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -e ".[dev,bench,export]"
	$(LATEST_VENV)/bin/pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	$(LATEST_VENV)/bin/pytest -q -m "not slow" -p no:cacheprovider

# Refresh the lock: the newest releases, kept only if the suite passes with them (test-latest), then frozen.
# torch is left out: TORCH_SPEC installs it first (a CUDA build for GPU users).
lock: test-latest
	{ echo "# make lock: the versions \`make test-latest\` passed with ($$(date -u +%F), Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'))."; \
	  echo "# Used as pip constraints by every install in the Makefile; torch comes from TORCH_SPEC."; \
	  grep -v -E '^(torch|triton|nvidia-[a-z0-9-]+)==' $(LATEST_VENV)/freeze.txt; } > $(LOCK)

lint: setup
	$(BIN)/ruff check src tests

# attnlab against torch.nn.Transformer and Hugging Face Marian (the bench extra), same process;
# prints the tables and writes bench.json (docs/performance.md). Overrides: make bench BENCH_ARGS="repeats=10"
$(BIN)/.attnlab-bench-installed: $(BIN)/.attnlab-installed
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(BIN)/.attnlab-bench-installed
	$(BIN)/attnlab-bench $(BENCH_ARGS)
