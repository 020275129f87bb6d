# diBoaS mesh. `make help` lists the targets; `make run` and `make test` are the two that matter.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
BUF         := node_modules/.bin/buf
PY_STAMP    := $(VENV)/.installed
NODE_STAMP  := node_modules/.installed
# Compare protos against this git ref in `make breaking` (CI sets it to the previous commit).
BUF_AGAINST ?= main

.PHONY: help setup generate migration check-generated lint breaking certs run test test-unit test-integration test-e2e bench kubernetes clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(PY_STAMP) $(NODE_STAMP) ## install Python packages (pinned, into .venv), buf and swagger-ui-dist (npm)

$(PY_STAMP): requirements.lock pyproject.toml
	@$(PYTHON_BOOT) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make setup: Python 3.11 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON_BOOT=/path/to/python3.11")'
	@command -v npm >/dev/null || { echo "make setup: npm (Node.js 18+) is needed to install buf"; exit 1; }
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-fund --no-audit --loglevel=error
	@touch $@

generate: $(PY_STAMP) ## regenerate generated/ (Python stubs, type stubs, descriptor set) from protos/
	$(PY) -m tools.generate

migration: $(PY_STAMP) ## write a service's next Alembic migration from its tables.py (SERVICE=name MESSAGE="what changes")
	@test -n "$(SERVICE)" -a -n "$(MESSAGE)" || { echo 'usage: make migration SERVICE=name MESSAGE="what changes"'; exit 2; }
	$(PY) -m tools.migration "$(SERVICE)" "$(MESSAGE)"

check-generated: $(PY_STAMP) ## fail when generated/ differs from what protos/ produce
	$(PY) -m tools.generate --check

lint: $(NODE_STAMP) $(PY_STAMP) ## buf lint (STANDARD rules) over protos/, ruff over the Python code
	$(BUF) lint
	$(VENV)/bin/ruff check .

breaking: $(NODE_STAMP) ## buf breaking against BUF_AGAINST (default main; skipped when that ref has no protos)
	@if git cat-file -e "$(BUF_AGAINST):protos" 2>/dev/null; then \
	  echo "buf breaking against $(BUF_AGAINST)"; \
	  $(BUF) breaking --against ".git#ref=$(BUF_AGAINST)"; \
	else echo "buf breaking: $(BUF_AGAINST) has no protos/ yet, nothing to compare"; fi

certs: $(PY_STAMP) ## make (or renew) the development CA and certificates (certs/out, or DIBOAS_CERTS_DIR)
	$(PY) -m certs.mkcerts

run: setup certs ## start the four services and the Envoy gateway (SQLite, no broker; MODE=monolith: one process; INSTANCES=2: two of each); Ctrl-C stops them
	$(if $(MODE),DIBOAS_MODE=$(MODE) )$(if $(INSTANCES),DIBOAS_INSTANCES=$(INSTANCES) )$(PY) -m services.launcher

test: setup certs lint ## run every test: lint, the generated check, then the unit, integration and e2e tiers
	$(PY) -m tools.generate --check
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup certs ## the unit tier (tests/unit): use cases, sagas and servicers on fakes, no network
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup certs ## the integration tier (tests/integration): real databases, real mTLS servers in one process
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup certs ## the end-to-end tier (tests/e2e): real processes in every shape, the real Envoy
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: setup certs ## measure the runtime's cost (bare vs full stack), the money path (settled SENDs/s) and REST via Envoy vs gRPC
	$(PY) -m bench.runtime_overhead
	$(PY) -m bench.db_units
	$(PY) -m bench.money_path
	$(PY) -m bench.gateway

kubernetes: $(PY_STAMP) $(NODE_STAMP) ## render deploy/kubernetes/base from mesh.yaml (committed; the unit tests fail when it is stale)
	$(PY) -m tools.kubernetes

clean: ## remove the virtualenv, node_modules and run state (keeps certificates)
	rm -rf $(VENV) node_modules var .pytest_cache
