# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test chaos lint typecheck pytest bench bench-pool bench-limits bench-tx clean
.PHONY: bench-clients bench-asgi docs dist-check

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

pytest: $(VENV)/.stamp-test
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Fault injection against the real services (tests/chaos): a few minutes, prints a table.
# AIOLEASE_CHAOS_SOAK_SECONDS (default 180) shortens the cancellation soak for local runs.
chaos: $(VENV)/.stamp-test
	$(BIN)/pytest tests/chaos -m chaos -q $(PYTEST_ARGS)

bench-pool: $(VENV)/.stamp-test
	$(PY) bench/pool.py

bench-limits: $(VENV)/.stamp-test
	$(PY) bench/limits.py

bench-tx: $(VENV)/.stamp-test
	$(PY) bench/transactions.py

bench-clients: $(VENV)/.stamp-test
	$(PY) bench/clients.py

bench-asgi: $(VENV)/.stamp-test
	$(PY) bench/asgi.py

bench: bench-pool bench-limits bench-tx

# The documentation site (MkDocs + Material, API reference from the docstrings) into site/.
docs: $(VENV)/.stamp-test
	$(BIN)/mkdocs build --strict --site-dir site

# Build the sdist and the wheel, install the wheel into a fresh venv, import it and run the demo.
dist-check: $(VENV)/.stamp-test
	rm -rf dist
	$(PY) -m build --outdir dist .
	bash scripts/dist_check.sh dist

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist site
