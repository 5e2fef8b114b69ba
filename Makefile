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

# The main job on the embedded synthetic transistor data: BCL pre-training (stage 1), a linear probe on
# its frozen encoder (stage 2) and the cross-entropy baseline, each tested once on the same generated
# balanced test set, then the three side by side with the chance line.
RUN_NAME := main-$(shell date -u +%Y%m%d-%H%M%S)
RUNS ?= runs
run: install
	$(PY) train_supcon.py --config configs/main_supcon.yaml run.output_dir=$(RUNS) run.name=$(RUN_NAME)-bcl
	$(PY) train_linear.py --config configs/main_linear.yaml run.output_dir=$(RUNS) run.name=$(RUN_NAME)-probe \
		model.stage1_checkpoint=$(RUNS)/$(RUN_NAME)-bcl/checkpoints/last.pt
	$(PY) train_linear.py --config configs/main_ce.yaml run.output_dir=$(RUNS) run.name=$(RUN_NAME)-ce
	$(PY) -m bcl.compare "BCL -> linear probe=$(RUNS)/$(RUN_NAME)-probe" \
		"BCL, own classifier=$(RUNS)/$(RUN_NAME)-bcl" "CE baseline=$(RUNS)/$(RUN_NAME)-ce"
	@echo "Real MVTec transistor numbers: docs/results.md"

# Lint (ruff: pyflakes, pycodestyle, bugbear, Google-style docstrings) then the whole suite.
test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
