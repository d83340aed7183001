# Two commands on a fresh machine:  make demo  (run the flywheel)  and  make test  (run the tests).
# Dagster's own commands on the same home:  eval "$$(make -s env)"  then e.g.  dg launch --job ingest_job
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

export CONTINUUM_HOME ?= $(CURDIR)/.continuum
export DAGSTER_HOME   ?= $(CONTINUUM_HOME)/dagster
PYTEST_ARGS ?= -n 2 -q
# Where torch comes from. Empty (default): pip's configured index, as before. On an index that serves CUDA builds
# (several GB): make install TORCH_INDEX=https://download.pytorch.org/whl/cpu  (PyTorch's CPU builds)
TORCH_INDEX ?=
JOB ?=

.PHONY: install demo test ui serve ingest status launch env bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned (the CPU build: from TORCH_INDEX where the default index serves CUDA builds); the
	# constraint keeps any later resolver from swapping it for another build
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )torch==2.13.0
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

# The home's Dagster instance, created as `continuum` creates it (DAGSTER_HOME must exist and be absolute).
HOME_READY = $(BIN)/python -c 'from continuum_pipeline.cli import prepare_home; from continuum_pipeline.settings \
	import get_settings; prepare_home(get_settings())'

# A job the Dagster way on this home (it shows in `continuum ui`):  make launch JOB=support_answer_training_job
launch: install
	@test -n "$(JOB)" || { echo 'make launch: give JOB=<name>, e.g. JOB=ingest_job (`dg list defs` lists them)' >&2; exit 2; }
	$(HOME_READY)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg launch --job $(JOB)  # dg warns unless it sees its venv active

# For `eval "$$(make -s env)"`: this shell's dg/dagster commands then use the home `continuum` uses.
env:
	@$(HOME_READY)
	@echo "export CONTINUUM_HOME='$(CONTINUUM_HOME)' DAGSTER_HOME='$(DAGSTER_HOME)'"

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/capture_overhead.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/judge_throughput.py
	$(BIN)/python bench/otlp_receiver.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/redaction.py
	$(BIN)/python bench/curation.py
	$(BIN)/python bench/rollout_stats.py

lint: install
	$(BIN)/ruff check continuum_pipeline continuum_pipeline_tests bench

clean:
	rm -rf $(VENV) .continuum .pytest_cache
