# make run   create .venv if missing, install (only when pyproject.toml changed), start API + worker
# make test  same install, then the test suite
# make lint  ruff
# make default-model  rebuild the shipped default model (see MODEL_CARD.md)
# make bench-serve / bench-train  the benchmarks in bench/ (README "Performance"); minutes each
# Every COLORIZER_* variable in the environment reaches the service unchanged.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test lint install default-model bench-serve bench-train

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

# Rebuild the shipped default model (about an hour on 2 CPU cores; fetches photographs with
# apt-get download, so Debian or Ubuntu only). Writes models/default/ and docs/default-model/.
default-model: $(STAMP)
	$(BIN)/colorizer default-model

# Benchmarks (README "Performance"): tables of ratios, measured within one run. Run them on an
# otherwise idle machine, one at a time. BENCH_ARGS=--quick for a shorter run.
bench-serve: $(STAMP)
	$(BIN)/python bench/serve.py $(BENCH_ARGS)
	$(BIN)/python bench/memory.py

bench-train: $(STAMP)
	$(BIN)/python bench/train.py $(BENCH_ARGS)
