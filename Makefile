# runstream: `make up` runs the product, `make test` runs the suite. Both set up
# everything on a fresh machine (venv, pip, npm assets, Kafka jars, Chromium).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RUNSTREAM_HOME ?= $(CURDIR)/.runstream
export RUNSTREAM_KAFKA ?= localhost:9092

.PHONY: up test setup venv dashboard-assets kafka-jars chromium lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

dashboard-assets:
	cd dashboard && npm install --no-audit --no-fund --loglevel=error
	mkdir -p dashboard/vendor && cp dashboard/node_modules/uplot/dist/uPlot.esm.js dashboard/node_modules/uplot/dist/uPlot.min.css dashboard/vendor/

kafka-jars: venv
	$(BIN)/python -c "from runstream.kafka_broker import ensure_jars; print(ensure_jars())"

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

setup: venv dashboard-assets kafka-jars

up: setup
	@if $(BIN)/python -c "import sys; from runstream.kafka_broker import broker_answers; sys.exit(0 if broker_answers('$(RUNSTREAM_KAFKA)') else 1)"; then \
		echo "using the Kafka broker at $(RUNSTREAM_KAFKA)"; $(BIN)/runstream up --demo; \
	else \
		$(BIN)/runstream kafka start || exit 1; trap '$(BIN)/runstream kafka stop' EXIT INT TERM; $(BIN)/runstream up --demo; \
	fi

test: setup chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint:
	$(BIN)/ruff check runstream ingest processor api tests bench
	$(BIN)/ruff format --check runstream ingest processor api tests bench

typecheck:
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .runstream test-output dashboard/node_modules dashboard/vendor
