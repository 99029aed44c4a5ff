# Each target sets itself up: it creates .venv and installs the package (editable, pinned by constraints.txt)
# when missing, so both work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base

.PHONY: setup demo test lint

# Everything: the tests, pre-training the bundled model (open_clip_train) and the Ray backend.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,training,ray]'
	touch $(STAMP) $(BASE_STAMP)

# What the demo needs, and no more: the package and its dependencies (a fresh set-up is most of the demo's time).
$(BASE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(BASE_STAMP)

setup: $(STAMP)

demo: $(BASE_STAMP)
	$(BIN)/lathadapter demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
