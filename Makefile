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

# The main job: stage 1 (BCL) then stage 2 (linear probe) on the embedded synthetic transistor data.
RUN_NAME := main-$(shell date -u +%Y%m%d-%H%M%S)
run: install
	$(PY) train_supcon.py --config configs/main_supcon.yaml run.name=$(RUN_NAME)-supcon
	$(PY) train_linear.py --config configs/main_linear.yaml run.name=$(RUN_NAME)-linear \
		model.stage1_checkpoint=runs/$(RUN_NAME)-supcon/checkpoints/best.pt

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
