# runstream: `make up` runs the product, `make test` runs the suite. Both set up
# everything on a fresh machine (venv, pip, npm assets, Kafka jars, Chromium).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RUNSTREAM_HOME ?= $(CURDIR)/.runstream
export RUNSTREAM_KAFKA ?= localhost:9092

.PHONY: up test setup venv dashboard-assets kafka-jars chromium compose-cli layout-tree layers lint typecheck bench clean wheelhouse

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

# package.json's postinstall copies uPlot into dashboard/vendor/ (setup.py runs the same for a wheel).
dashboard-assets:
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error

kafka-jars: venv
	$(BIN)/python -c "from runstream.kafka_broker import ensure_jars; print(ensure_jars())"

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# tests/test_compose.py runs `docker-compose config` on docker-compose.yml: Debian's package
# parses the file without a Docker daemon.
compose-cli:
	@command -v docker-compose >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null)

setup: venv dashboard-assets kafka-jars

up: setup
	@if $(BIN)/python -c "import sys; from runstream.kafka_broker import broker_answers; sys.exit(0 if broker_answers('$(RUNSTREAM_KAFKA)') else 1)"; then \
		echo "using the Kafka broker at $(RUNSTREAM_KAFKA)"; $(BIN)/runstream up --demo; \
	else \
		$(BIN)/runstream kafka start || exit 1; trap '$(BIN)/runstream kafka stop' EXIT INT TERM; $(BIN)/runstream up --demo; \
	fi

test: setup chromium compose-cli wheelhouse
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Every wheel the client and server installs and the wheel's build need (setuptools, wheel),
# from pyproject.toml's lists: tests/test_packaging.py builds and installs runstream with
# `pip --no-index --find-links` from here, so the test itself never reaches a registry.
# Remade only when pyproject.toml changes (the stamp); pip's cache makes a remake fast.
export RUNSTREAM_WHEELHOUSE ?= $(RUNSTREAM_HOME)/wheelhouse
wheelhouse: $(RUNSTREAM_WHEELHOUSE)/.stamp
$(RUNSTREAM_WHEELHOUSE)/.stamp: pyproject.toml | $(BIN)/python
	mkdir -p $(RUNSTREAM_WHEELHOUSE)
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(*p["build-system"]["requires"], "wheel", *p["project"]["dependencies"], *p["project"]["optional-dependencies"]["server"], sep="\n")' > $(RUNSTREAM_WHEELHOUSE)/requirements.txt
	$(BIN)/pip wheel -q --wheel-dir $(RUNSTREAM_WHEELHOUSE) -r $(RUNSTREAM_WHEELHOUSE)/requirements.txt
	touch $@

PY_SOURCES := runstream ingest processor api dashboard/__init__.py tests bench setup.py

# mypy and import-linter resolve modules from folders, not through setuptools' editable
# finder: they read the installed layout from a tree of file links (build/layout/runstream/
# with ingest/, processor/, api/ inside), made anew each time.
LAYOUT ?= build/layout
layout-tree:
	rm -rf $(LAYOUT) && mkdir -p $(LAYOUT)/runstream/dashboard
	cp -rs "$(CURDIR)/runstream/." $(LAYOUT)/runstream/
	for d in ingest processor api; do cp -rs "$(CURDIR)/$$d" $(LAYOUT)/runstream/$$d; done
	ln -s "$(CURDIR)/dashboard/__init__.py" $(LAYOUT)/runstream/dashboard/__init__.py
	find $(LAYOUT) -name __pycache__ -prune -exec rm -rf {} +

# The layer contracts of pyproject.toml ([tool.importlinter]); tests/test_layers.py runs it too.
layers: layout-tree
	cd $(LAYOUT) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

lint: layers
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)

typecheck: layout-tree
	cd $(LAYOUT) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(abspath $(LAYOUT)).mypy_cache -p runstream

bench: setup
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .runstream test-output dashboard/node_modules dashboard/vendor
