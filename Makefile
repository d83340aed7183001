# Two commands on a fresh machine:  make demo  (run the flywheel)  and  make test  (run the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

export CONTINUUM_HOME ?= $(CURDIR)/.continuum
export DAGSTER_HOME   ?= $(CONTINUUM_HOME)/dagster
PYTEST_ARGS ?= -n 2 -q

.PHONY: install demo test ui serve ingest status bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel; the constraint keeps any resolver from pulling a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/continuum demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: install
	$(BIN)/continuum ui

serve: install
	$(BIN)/continuum serve

ingest: install
	$(BIN)/continuum ingest

status: install
	$(BIN)/continuum status

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/capture_overhead.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/judge_throughput.py
	$(BIN)/python bench/otlp_receiver.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/redaction.py
	$(BIN)/python bench/curation.py

lint: install
	$(BIN)/ruff check continuum_pipeline continuum_pipeline_tests bench

clean:
	rm -rf $(VENV) .continuum .pytest_cache
