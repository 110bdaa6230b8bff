# Two commands do all set-up: `make repro` (the pipeline) and `make test` (the tests).
# Both create the virtualenv at .venv/ when it is missing or older than pyproject.toml or
# constraints.txt (the exact versions every install gets).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test constraints clean-env

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml, so pip cannot pull a second torch build.
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The whole pipeline, its (variant, seed) runs trained side by side: the Prefect flow in this process
# (README: "Concurrent runs"). JOBS=N: runs at once; PROFILE=paper: profiles/paper.yaml applied first.
# A plain `dvc repro` runs the same stages one at a time and gives the same results.
repro: $(STAMP)
	cyclegan repro $(if $(JOBS),--jobs $(JOBS)) $(if $(PROFILE),--profile $(PROFILE))

# Two pytest workers: each end-to-end unit (a module, or modules sharing a session fixture; heaviest
# first, tests/conftest.py) runs whole on one of them, its fixtures once; every other test goes to
# whichever is free. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	ruff check .
	python -m pytest -n $(TEST_WORKERS) --durations=25

# Re-pin constraints.txt to what .venv holds now (after changing dependencies in pyproject.toml).
constraints: $(STAMP)
	{ echo "# Exact versions the pipeline was built and tested with (pip freeze of .venv)."; \
	  echo "# The Makefile installs with -c constraints.txt; refresh with: make constraints"; \
	  python -m pip freeze --exclude-editable; } > constraints.txt

clean-env:
	rm -rf $(VENV)
