# `make run` trains the default experiment; `make test` runs the test suite.
# Both create a virtual environment in .venv when none is active and install the package with
# every extra (`.[test]`, see pyproject.toml) into it once: the exact versions of the lock file
# requirements/test.txt (Linux x86-64, Python 3.11, with hashes) when it is there, which are the
# versions that produced the committed numbers; `make lock` refreshes it to the newest versions.
VENV ?= .venv
PYTHON := $(if $(VIRTUAL_ENV),python,$(VENV)/bin/python)
STAMP := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(VENV))/.fisher_jax-installed
WORKDIR ?= runs/default
CONFIG ?= configs/default.py
LOCK := requirements/test.txt
LOCKED := $(wildcard $(LOCK))

.PHONY: docs install lint lock run test test-fast

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml setup.py $(LOCKED) $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PYTHON) -m pip install -q --upgrade pip
	$(if $(LOCKED),$(PYTHON) -m pip install -q --require-hashes -r $(LOCK))
	$(PYTHON) -m pip install -q $(if $(LOCKED),--no-deps) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lock: $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PYTHON) -m pip install -q uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra test --upgrade --generate-hashes \
	  --python-version 3.11.7 --python-platform x86_64-unknown-linux-gnu --no-header \
	  --no-annotate -o $(LOCK)

run: install
	$(PYTHON) -m fisher_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: install
	$(PYTHON) -m pytest -q tests

# The development loop: every test not marked slow (pyproject.toml's pytest markers).
test-fast: install
	$(PYTHON) -m pytest -q -m 'not slow' tests

# ruff (bugs, not style) over the code, then basedpyright (basic mode) over the library and
# the run directory; both configured in pyproject.toml.
lint: install
	$(PYTHON) -m ruff check fisher_jax experiments configs benchmarks tests docs
	$(PYTHON) -m basedpyright --project pyproject.toml

# The documentation site (mkdocs.yml), built strictly into site/, running the tutorials (the
# docs extra is part of the test extra and of the lock).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir site
