# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test test-matrix chaos lint typecheck pytest bench bench-pool bench-limits bench-tx bench-compat clean
.PHONY: bench-clients bench-asgi bench-pool-overload bench-pool-cancel docs dist-check

# One stamp per install flavour, rebuilt when pyproject.toml changes.
$(PY):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "aiolease needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.stamp-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[sqlite]'
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.stamp-demo

demo: $(VENV)/.stamp-demo
	$(PY) -m aiolease demo

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check src tests bench examples docs scripts
	$(BIN)/ruff format --check src tests bench examples scripts  # docs/*.md keep hand-aligned snippets

typecheck: $(VENV)/.stamp-test
	$(BIN)/mypy

# The suite mostly waits (on the servers, on timers), so it runs on PYTEST_WORKERS parallel
# workers (pytest-xdist); PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4

pytest: $(VENV)/.stamp-test
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck pytest

# Fault injection against the real services (tests/chaos): a few minutes, prints a table.
# AIOLEASE_CHAOS_SOAK_SECONDS (default 180) shortens the cancellation soak for local runs.
chaos: $(VENV)/.stamp-test
	$(BIN)/pytest tests/chaos -m chaos -q -o faulthandler_timeout=660 $(PYTEST_ARGS)

# The whole pytest suite on every CPython 3.11-3.13 found (PATH or pyenv), in public mode
# (AIOLEASE_COMPAT=public) and with the lowest driver versions pyproject.toml allows; one venv
# per run under .venv-matrix/, each on PYTEST_WORKERS workers. See .ci/matrix.py (MATRIX_RUNS=...,
# MATRIX_PYTEST_ARGS=...).
test-matrix:
	PYTEST_WORKERS=$(PYTEST_WORKERS) $(PYTHON) .ci/matrix.py

# Each benchmark runs twice, as is and with AIOLEASE_COMPAT=public (bench/_modes.py prints the
# headline ratios of both modes); BENCH_ARGS go to the benchmark.
bench-pool: $(VENV)/.stamp-test
	$(PY) bench/_modes.py bench/pool.py $(BENCH_ARGS)

bench-pool-overload: $(VENV)/.stamp-test
	$(PY) bench/pool_overload.py $(BENCH_ARGS)

bench-pool-cancel: $(VENV)/.stamp-test
	$(PY) bench/pool_cancel.py $(BENCH_ARGS)

bench-limits: $(VENV)/.stamp-test
	$(PY) bench/_modes.py bench/limits.py $(BENCH_ARGS)

bench-tx: $(VENV)/.stamp-test
	$(PY) bench/_modes.py bench/transactions.py $(BENCH_ARGS)

bench-clients: $(VENV)/.stamp-test
	$(PY) bench/clients.py

bench-asgi: $(VENV)/.stamp-test
	$(PY) bench/asgi.py

# What each fence of aiolease._compat buys: private path vs public fallback, one process.
bench-compat: $(VENV)/.stamp-test
	$(PY) bench/compat.py $(BENCH_ARGS)

bench: bench-pool bench-limits bench-tx bench-compat

# The documentation site (MkDocs + Material, API reference from the docstrings) into site/.
docs: $(VENV)/.stamp-test
	$(BIN)/mkdocs build --strict --site-dir site

# Build the sdist and the wheel, install the wheel into a fresh venv, import it and run the demo.
dist-check: $(VENV)/.stamp-test
	rm -rf dist
	$(PY) -m build --outdir dist .
	bash scripts/dist_check.sh dist

clean:
	rm -rf $(VENV) .venv-matrix .mypy_cache .pytest_cache .ruff_cache build dist site
