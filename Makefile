# Common tasks. The venv is .venv (see README's fresh-machine commands).
PY ?= .venv/bin/python

.PHONY: install test lint format bench bench-json gpu-check train

install:
	python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

bench:
	$(PY) -m pytest benchmarks/ --benchmark-only

bench-json:
	$(PY) -m pytest benchmarks/ --benchmark-only --benchmark-json=bench.json && $(PY) benchmarks/table.py bench.json

gpu-check:
	bash benchmarks/gpu_check.sh

train:
	$(PY) examples/train_finegym.py
