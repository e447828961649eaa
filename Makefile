# make run   create .venv if missing, install (only when pyproject.toml changed), start API + worker
# make test  same install, then the test suite
# make lint  ruff
# Every COLORIZER_* variable in the environment reaches the service unchanged.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/colorizer up

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
