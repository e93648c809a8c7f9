# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install run pool test unit integration bench clean

$(BIN)/modaclouds-batch: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/modaclouds-batch

pool: install
	$(BIN)/modaclouds-batch pool up

# Installs everything, brings up the pool and serves the API on port 5000.
run: pool
	$(BIN)/modaclouds-batch serve --host $(HOST) --port $(PORT)

# The whole test suite: unit tests, then integration tests against the real pool.
test: pool
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: pool
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
