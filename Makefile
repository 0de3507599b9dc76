# The two README commands are `make quickstart` and `make test`; everything else is a helper.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ENV := source scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-unit test-data test-model test-integration lock bench clean

setup:
	@bash scripts/setup.sh

quickstart: setup
	@$(ENV) bash scripts/quickstart.sh

test: setup
	@$(ENV) bash scripts/test.sh $(PYTEST_ARGS)

test-unit: setup
	@$(ENV) $(PY) -m pytest -m unit $(PYTEST_ARGS)

test-data: setup
	@$(ENV) $(PY) -m pytest -m data $(PYTEST_ARGS)

test-model: setup
	@$(ENV) $(PY) -m pytest -m model $(PYTEST_ARGS)

test-integration: setup
	@$(ENV) $(PY) -m pytest -m integration $(PYTEST_ARGS)

bench: setup
	@$(ENV) $(PY) bench/quality.py

lock: setup
	@bash scripts/lock.sh

clean:
	-@infra/services.sh down >/dev/null 2>&1
	rm -rf .mixllm .pytest_cache .hypothesis
