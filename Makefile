# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install run pool chromium test unit integration bench clean

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

# Debian's chromium for the browser test of /docs (which skips without it); about 20 s, once, as root.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test of /docs will skip"

# The whole test suite: unit tests, then integration tests against the real pool.
test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: pool
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
