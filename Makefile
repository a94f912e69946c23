# `make run` trains the default experiment; `make test` runs the test suite.
# Both create a virtual environment in .venv when none is active and install the package with
# every extra (`.[test]`, see pyproject.toml) into it once.
VENV ?= .venv
PYTHON := $(if $(VIRTUAL_ENV),python,$(VENV)/bin/python)
STAMP := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(VENV))/.fisher_jax-installed
WORKDIR ?= runs/default
CONFIG ?= configs/default.py

.PHONY: install run test

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml setup.py $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PYTHON) -m fisher_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: install
	$(PYTHON) -m pytest -q tests
