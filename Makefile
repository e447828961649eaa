# make run   create .venv if missing, install (only when pyproject.toml changed), start API + worker
# make test  same install (and Debian's chromium for the browser tests, when missing), then the test suite
# make lint  ruff
# make default-model  rebuild the shipped default model (see MODEL_CARD.md)
# make bench-serve / bench-train / bench-folder  the benchmarks in bench/ (docs/performance.md); minutes each
# Every COLORIZER_* variable in the environment reaches the service unchanged.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test lint install default-model bench-serve bench-train bench-folder

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/colorizer up

test: $(STAMP) | $(CHROMIUM)
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/test_web.py drives Debian's Chromium with Playwright (never `playwright install`: its own
# browser download does not work here). Installed only when missing; without apt-get the browser
# tests skip (and fail under CI=1).
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "warning: $@ is missing and there is no apt-get to install it: the browser tests will skip"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

# Rebuild the shipped default model (about 75 minutes on 2 CPU cores; fetches photographs with
# apt-get download, so Debian or Ubuntu only; resumes after its last finished stage). Writes
# models/default/ and docs/default-model/.
default-model: $(STAMP)
	$(BIN)/colorizer default-model

# Benchmarks (docs/performance.md): tables of ratios, measured within one run. Run them on an
# otherwise idle machine, one at a time. BENCH_ARGS=--quick for a shorter run.
bench-serve: $(STAMP)
	$(BIN)/python bench/serve.py $(BENCH_ARGS)
	$(BIN)/python bench/memory.py

bench-train: $(STAMP)
	$(BIN)/python bench/train.py $(BENCH_ARGS)

# colorizer colorize on folders of 256x256 and 2 MP photographs: images/s against the old loop.
bench-folder: $(STAMP)
	$(BIN)/python bench/folder.py $(BENCH_ARGS)
