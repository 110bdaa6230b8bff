# Two commands do all set-up: `make repro` (the pipeline) and `make test` (the tests).
# Both create the virtualenv at .venv/ when it is missing or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test lint e2e clean-env

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml, so pip cannot pull a second torch build.
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make repro PROFILE=paper: the same pipeline as a DVC experiment with profiles/paper.yaml applied.
repro: $(STAMP)
ifdef PROFILE
	dvc exp run $$(python -m pipeline.profiles $(PROFILE))
else
	dvc repro
endif

test: $(STAMP)
	ruff check .
	python -m pytest

clean-env:
	rm -rf $(VENV)
