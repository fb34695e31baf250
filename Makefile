# edgesim — two-command quick start: `make run`, `make test`.
# Every target creates .venv and installs from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SCENARIO ?= scenarios/lync2013-scaled-edge-dns-nat.yaml
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: run test bench lint venv clean

# setup.py compiles simulator/wire/sip with mypyc: an edited source there is rebuilt by the next make (until then it
# runs from its .py: simulator/wire/sip/_native.py).
$(STAMP): pyproject.toml setup.py setup_mypyc.ini $(wildcard simulator/wire/sip/*.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/edgesim run $(SCENARIO) $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check simulator tests $(wildcard benchmarks)
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) reports .pytest_cache .hypothesis .mypy_cache .ruff_cache build *__mypyc*.so \
		simulator/wire/sip/*.so simulator/wire/sip/_compiled.json
