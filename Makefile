# The two set-up commands: `make run` and `make test`. Everything else is
# optional. Only Python 3.11+ and make are assumed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: run test check lint format bench bench-quick clean load soak fuzz verify-units docs

# A development install: editable, in setuptools' "compat" mode so the
# checkout itself is on sys.path and Twisted's plugin scan finds
# twisted/plugins/gateway_plugin.py; then the plugin cache is rebuilt so
# twistd never warns about a stale one. The optional accelerator
# (gateway/codec/_speedups.c) is built in place when a C compiler is there,
# and rebuilt when its source changes.
$(BIN)/.installed: setup.cfg setup.py pyproject.toml gateway/codec/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

run: $(BIN)/.installed
	$(BIN)/twistd -n --pidfile= gateway $(RUN_ARGS)

# The codec, translator and proxy unit tests run a second time on the
# pure-Python translator alone (GATEWAY_NO_EXTENSIONS=1), the fallback where
# the accelerator is not built: a few seconds.
FALLBACK_TESTS = tests.test_codec tests.test_translator tests.test_speedups tests.test_proxy

test: $(BIN)/.installed
	$(BIN)/trial --jobs=2 tests
	GATEWAY_NO_EXTENSIONS=1 $(BIN)/trial --temp-directory=_trial_temp.fallback \
		$(FALLBACK_TESTS)
	$(MAKE) lint

# systemd-analyze verify on the units as shipped wants /opt/gateway/bin/twistd
# to exist; this checks them on any machine, with the checkout's own twistd
# in its place (in a copy of the units).
verify-units: $(BIN)/.installed
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	for unit in systemd/*.service systemd/*.socket; do \
		sed "s|/opt/gateway/bin/twistd|$(abspath $(BIN))/twistd|" "$$unit" \
			> "$$dir/$$(basename $$unit)"; \
	done && \
	systemd-analyze verify "$$dir"/*.service "$$dir"/*.socket && \
	echo "systemd units: ok"

# The manual (docs/) as HTML and the gateway(8) man page, warnings as
# errors. The man page ships in the package as gateway/gateway.8 (building
# a wheel needs no Sphinx): it is refreshed here when the sources change,
# and tests/test_docs.py fails when the committed copy is stale (so does
# `make docs CHECK_MAN=1`, which CI runs, instead of refreshing it).
# -E: a fresh build every time, since the reference is read from the code,
# which Sphinx does not track as a source.
SPHINXBUILD = $(BIN)/sphinx-build -E -W --keep-going -q

$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,docs]' --config-settings editable_mode=compat
	touch $@

docs: $(BIN)/.docs-installed
	$(SPHINXBUILD) -b html docs docs/_build/html
	$(SPHINXBUILD) -b man docs docs/_build/man
	@if ! cmp -s docs/_build/man/gateway.8 gateway/gateway.8; then \
		if [ -n "$(CHECK_MAN)" ]; then \
			echo "gateway/gateway.8 is stale: run make docs and commit it" >&2; exit 1; \
		fi; \
		cp docs/_build/man/gateway.8 gateway/gateway.8; \
		echo "gateway/gateway.8 updated from docs/: commit it"; \
	fi
	@echo "manual: docs/_build/html/index.html; man page: man -l gateway/gateway.8"

# The long suites, outside `make test` (which runs small versions of load
# and soak). Each keeps its own trial directory, whose test.log holds the
# figures; they are printed at the end.
SOAK_SECONDS ?= 600
SOAK_REPORT ?= 60
FUZZ_SECONDS ?= 300

load: $(BIN)/.installed
	GATEWAY_LOAD=full $(BIN)/trial --temp-directory=_trial_temp.load tests.test_load
	@grep -h '\] load: ' _trial_temp.load/test.log | cut -d' ' -f4-

soak: $(BIN)/.installed
	GATEWAY_SOAK_SECONDS=$(SOAK_SECONDS) GATEWAY_SOAK_REPORT=$(SOAK_REPORT) \
		$(BIN)/trial --temp-directory=_trial_temp.soak tests.test_soak

# Hypothesis against a live gateway with many examples, then atheris on the
# codecs when it installs (it is not a test dependency).
fuzz: $(BIN)/.installed
	HYPOTHESIS_PROFILE=fuzz $(BIN)/trial --temp-directory=_trial_temp.fuzz tests.test_hostile
	@grep -h '\] hostile: ' _trial_temp.fuzz/test.log | cut -d' ' -f4-
	@if $(BIN)/python -m pip install --quiet 'atheris>=2.3'; then \
		mkdir -p _trial_temp.fuzz/corpus && \
		$(BIN)/python tests/fuzz_codec.py -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=_trial_temp.fuzz/ _trial_temp.fuzz/corpus; \
	else \
		echo "atheris did not install: the codecs were not fuzzed"; \
	fi

# Type-checked strictly: the modules with no Twisted transport juggling.
TYPED = gateway/codec gateway/stats.py gateway/backends.py gateway/names.py \
	gateway/proxyprotocol.py gateway/addresses.py gateway/admission.py \
	gateway/certnames.py gateway/proxytlv.py gateway/config.py \
	gateway/pair.py gateway/refusals.py gateway/progress.py

lint: $(BIN)/.installed
	$(BIN)/ruff check gateway twisted tests benchmarks docs
	$(BIN)/ruff format --check gateway twisted tests benchmarks docs
	$(BIN)/mypy --strict $(TYPED)

format: $(BIN)/.installed
	$(BIN)/ruff check --fix gateway twisted tests benchmarks docs
	$(BIN)/ruff format gateway twisted tests benchmarks docs

# The comparison benchmark (see benchmarks/README.md): about 20 minutes in
# full, about a minute with bench-quick. uvloop keeps the load generator cheap.
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python -m benchmarks.compare --twistd $(BIN)/twistd

bench-quick: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python -m benchmarks.compare --twistd $(BIN)/twistd --quick

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* twisted/plugins/dropin.cache gateway/codec/*.so docs/_build
