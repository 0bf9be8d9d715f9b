# One virtual environment at .venv, installed from the pinned locks (the same ones CI and the
# image use). `make demo` and `make test` are the only two commands a user needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCKS := docker/requirements.lock deploy/requirements.lock tests/requirements.lock
WEIGHTS := local/weights/tf_efficientnet_lite0.safetensors
PYTEST := $(VENV)/bin/pytest

.PHONY: system-deps system-deps-test venv demo local-data test test-fast test-full lint format locks clean bench bench-train bench-serve

venv: $(STAMP)

# The package after the locks: its `train` console script replaces sagemaker-training's (script mode runs
# through ours); pip reinstalls an editable package every time, so this order holds on every update.
$(STAMP): $(LOCKS) container/pyproject.toml | system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(foreach l,$(LOCKS),-r $(l))
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e container/
	$(PY) -m pip check
	touch $@

system-deps:
	local/system_deps.sh

system-deps-test:
	local/system_deps.sh --test

$(WEIGHTS): $(STAMP)
	$(PY) -m local.convert_weights --out $@

demo: system-deps $(STAMP) $(WEIGHTS)
	$(PY) -m local.demo

# ./local/opt_ml as /opt/ml, for docker compose, SageMaker local mode and `train` on this machine:
#   make local-data                       the small offline sample (the compose image's: 850 photos, seconds to train)
#   make local-data DATA=~/photos         your folder of class folders (split 80/10/10) or train/ valid/ [test/] folders
#   make local-data DATA=<URL of a zip>   e.g. the dog-breed dogImages.zip
local-data: $(STAMP) $(WEIGHTS)
	$(PY) -m local.demo --prepare-only $(if $(DATA),--data "$(DATA)")

test: system-deps-test $(STAMP) lint
	$(PYTEST) -m "not gpu" tests

test-fast: system-deps-test $(STAMP)
	$(PYTEST) -m "not slow and not container and not aws and not gpu" tests/unit tests/contract tests/container

# the same suite with the long reliability variants: 5,200 fuzzed bodies, 10,000 requests of load,
# 300 schemathesis cases per operation (tests/reliability.py)
test-full: system-deps-test $(STAMP) lint
	RELIABILITY_FULL=1 $(PYTEST) -m "not gpu" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy container/src deploy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# benchmarks: ours against the fixed baselines, A/B interleaved -> local/bench/results/*.{json,md}
bench: bench-train bench-serve

bench-train: system-deps $(STAMP)
	$(PY) -m local.bench.train_bench

bench-serve: system-deps $(STAMP)
	$(PY) -m local.bench.serve_bench

locks: $(STAMP)
	$(PY) -m local.lock

clean:
	rm -rf $(VENV) local/weights .pytest_cache
	find local/opt_ml -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
