# Every target sets itself up: a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
BASE   := $(VENV)/.base-installed
DEV    := $(VENV)/.dev-installed
ROOTS  := core daemon probes rollout loadtests

.PHONY: demo test lint bench system-deps typecheck-tree clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE): pyproject.toml setup.py | $(PY)
	$(PIP) install -e .
	touch $@

$(DEV): $(BASE)
	$(PIP) install -e '.[test,lint]'
	touch $@

## demo: run the story of six releases on the embedded local platform
demo: $(BASE)
	$(VENV)/bin/vouch demo

## test: install what the tests need (Prometheus and Alertmanager too, as root), lint, then test
test: $(DEV) system-deps lint
	$(PY) -m pytest

system-deps:
	@scripts/system-deps

typecheck-tree:
	@mkdir -p build/typecheck/vouch
	@for r in $(ROOTS); do ln -sfn ../../../$$r build/typecheck/vouch/$$r; done

## lint: ruff, mypy and the import-direction contracts
lint: $(DEV) typecheck-tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p vouch
	$(VENV)/bin/lint-imports

## bench: the performance measurements, each against a named peer
bench: $(DEV) system-deps
	$(PY) benchmarks/alarm_to_rollback.py
	$(PY) benchmarks/probe_cpu.py
	$(PY) benchmarks/probe_scale.py
	$(PY) benchmarks/policy_decision.py
	$(PY) benchmarks/audit_append.py
	$(PY) benchmarks/loadtest_overhead.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
