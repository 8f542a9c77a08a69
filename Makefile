# The two set-up commands (see README.md): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the install (and the build of the C extensions mcs_edge/_fastfwd.c, _sipscan.c, _wirescan.c) is redone when any of these change
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py mcs_edge/_fastfwd.c mcs_edge/_sipscan.c mcs_edge/_wirescan.c | sha1sum | cut -c1-12)

.PHONY: run test test-core test-tx lint typecheck bench clean

$(STAMP): pyproject.toml setup.py mcs_edge/_fastfwd.c mcs_edge/_sipscan.c mcs_edge/_wirescan.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]' --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-*; touch $@

## Install into .venv and run the edge on its embedded default (demo tenant on https://localhost:8443/).
run: $(STAMP)
	$(BIN)/twistd -n --pidfile= --reactor=uvloop mcs-edge

## Install everything the tests need (Debian packages too) and run the whole suite.
test: $(STAMP)
	scripts/install-test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q -p no:cacheprovider --reactor=asyncio tests/tx tests/e2e
	$(BIN)/ruff check mcs_edge tests bench
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check mcs_edge tests bench
	$(BIN)/ruff format --check mcs_edge tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build dist *.egg-info
