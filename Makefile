# Two commands for a fresh machine: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest soak bench docs clean

$(STAMP): pyproject.toml transports/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,torch]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m zcser demo

test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check zcser transports tests examples
	$(BIN)/ruff format --check zcser transports tests examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict zcser/__init__.py zcser/errors.py zcser/channels zcser/codec/__init__.py zcser/codec/core.py zcser/codec/plan.py zcser/codec/layout.py zcser/snapshot transports/zerobuffer transports/fanout transports/errors.py

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -m "not soak"

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak

bench: $(STAMP)
	$(BIN)/python -m zcser bench

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache
