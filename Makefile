# Endcap: `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKSPACE ?= .endcap
HOST ?= 127.0.0.1
PORT ?= 50051
STAMP := $(VENV)/.installed

export OPENBLAS_NUM_THREADS := 1
export ENDCAP_WORKSPACE := $(abspath $(WORKSPACE))

.PHONY: venv serve demo test lint typecheck protos check-protos docs lock clean-demo

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -rf endcap.egg-info  # a build leftover; on sys.path it would shadow the installed entry points
	touch $@

venv: $(STAMP)

# The demo store and model, each built only when missing.
$(WORKSPACE)/data/interactions.parquet: | $(STAMP)
	$(BIN)/endcap ingest --demo

$(WORKSPACE)/feast/registry.db: | $(WORKSPACE)/data/interactions.parquet
	$(BIN)/endcap features

$(WORKSPACE)/models/CURRENT: | $(WORKSPACE)/feast/registry.db
	$(BIN)/endcap train

demo: $(WORKSPACE)/models/CURRENT

serve: $(STAMP) demo
	$(BIN)/endcap serve --host $(HOST) --port $(PORT)

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core plugins feature_repo tests tools

# mypy --strict over the installed endcap package (core/, plugins/, feature_repo/).
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

# Regenerate the committed gRPC stubs from protos/.
protos: $(STAMP)
	$(BIN)/python tools/generate_protos.py

check-protos: $(STAMP)
	$(BIN)/python tools/generate_protos.py --check

# Regenerate docs/plugins.md (the hook reference) from the hookspec and type docstrings.
docs: $(STAMP)
	$(BIN)/python tools/generate_docs.py

# Re-resolve the pinned dependency set from pyproject.toml (needs the package registry).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]'
	.lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v "^endcap\|^pip==" > requirements.lock
	rm -rf .lock-venv

clean-demo:
	rm -rf $(WORKSPACE)
