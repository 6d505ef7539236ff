# Evergreen: `make demo` runs the loop on the embedded default, `make test` runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml stages call `python -m stages.X`: that must be the venv's python
export PATH := $(BIN):$(PATH)

LAKE ?= lake
START ?= 2026-01-01
DAYS ?= 120
SEED ?= 7
# `make demo DATASET=retail|bank|bikes`: that example's sample lake (its own start and length)
# and params.yaml composed with dataset=<name> (+ OVERRIDES, e.g. OVERRIDES=model=hgb)
DATASET ?= shop
OVERRIDES ?=

.PHONY: setup demo test lint serve clean chromium

setup: $(VENV)/.installed

# torch first, from its pin, so nothing can pull the CUDA build
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
ifeq ($(DATASET)$(OVERRIDES),shop)
	evergreen params --check
	evergreen lake simulate --lake $(LAKE) --start $(START) --days $(DAYS) --seed $(SEED)
else
	evergreen params dataset=$(DATASET) $(OVERRIDES)
	evergreen lake simulate --lake $(LAKE) $(if $(filter shop,$(DATASET)),--start $(START) --days $(DAYS),--dataset $(DATASET)) --seed $(SEED)
endif
	evergreen ingest --lake $(LAKE)
# the training run (features .. card, drift, the gate) promotes a blessed model to
# models/champion; the prediction run (validate .. predict_set, predict, monitor, report) scores
# the latest day with it and publishes. Both clear the locks a killed earlier run left first.
	evergreen run training --promote
	evergreen run prediction --lake $(LAKE)
	dvc push
	dvc metrics show --md metrics/evaluate.json metrics/train.json
	@echo "insights report: $(CURDIR)/reports/report.html (Markdown twin: reports/report.md)"

# two workers (the machine's cores); a test file's fixtures stay in one worker
test: setup chromium
	pytest -n 2 --dist loadfile

# the report test renders reports/report.html in headless Chromium (Debian's package)
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "/usr/bin/chromium missing: install Debian's chromium package (apt-get install chromium, as root)" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: setup
	ruff check .
	ruff format --check .
	shellcheck .ci/run
	actionlint -shellcheck "$(BIN)/shellcheck" .github/workflows/*.yml
	zizmor --offline --min-severity medium .github/workflows/
	hadolint --failure-threshold warning serve/Dockerfile

# the server on 127.0.0.1:8000 (conf/serve/default.yaml); `make serve PORT=9000` overrides
serve: setup
	evergreen serve $(if $(PORT),--port $(PORT))

clean:
	rm -rf artifacts models metrics plots
