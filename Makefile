# The two set-up commands: `make run` and `make test`. Everything else is
# optional. Only Python 3.11+ and make are assumed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: run test check lint format bench bench-quick clean

# A development install: editable, in setuptools' "compat" mode so the
# checkout itself is on sys.path and Twisted's plugin scan finds
# twisted/plugins/gateway_plugin.py; then the plugin cache is rebuilt so
# twistd never warns about a stale one.
$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

run: $(BIN)/.installed
	$(BIN)/twistd -n --pidfile= gateway $(RUN_ARGS)

test: $(BIN)/.installed
	$(BIN)/trial --jobs=2 tests
	$(MAKE) lint

lint: $(BIN)/.installed
	$(BIN)/ruff check gateway twisted tests benchmarks
	$(BIN)/ruff format --check gateway twisted tests benchmarks

format: $(BIN)/.installed
	$(BIN)/ruff check --fix gateway twisted tests benchmarks
	$(BIN)/ruff format gateway twisted tests benchmarks

# The comparison benchmark (see benchmarks/README.md): a few minutes in full,
# under a minute with bench-quick. uvloop keeps the load generator cheap.
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python -m benchmarks.compare --twistd $(BIN)/twistd

bench-quick: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python -m benchmarks.compare --twistd $(BIN)/twistd --quick

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* twisted/plugins/dropin.cache
