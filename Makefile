# Two commands a new user needs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install stack-up stack-down stack-status cluster-up cluster-down cluster-status cluster-fault test unit integration fault lint demo bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

stack-up:
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

## A 3-broker KRaft cluster (127.0.0.1:29092-29094) and a 3-master Redis Cluster (127.0.0.1:27001-27003).
cluster-up:
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

cluster-status:
	scripts/cluster.sh status

## All tests: unit, integration against the real Kafka and Redis, and the fault suite.
test: install stack-up
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

integration: install stack-up
	$(PY) -m pytest tests/integration

## The fault-injection suite alone (part of `make test` too); it runs its own Kafka and Redis.
fault: install
	$(PY) -m pytest -m "fault and not cluster"

## The fault scenarios on the 3-broker cluster and the Redis Cluster (part of `make test` too).
cluster-fault: install
	$(PY) -m pytest -m cluster

## ruff, mypy (strict) and the import-linter layers contract (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy && $(VENV)/bin/lint-imports

demo: install stack-up
	$(PY) -m examples.trading_pipeline.demo

## Every benchmark once; writes bench/results/report.md, report.json and report.png.
bench: install stack-up
	$(PY) -m bench report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
