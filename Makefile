# `make run` runs the main job, `make test` the test suite; both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test clean

install: $(VENV)/.installed

# Reinstall when the package metadata changes; the stamp keeps repeated `make` calls instant.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(PY) examples/loss_demo.py

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
