# Quickstart:  make demo   |   make test
# Both create .venv, install the project and fetch the models (verified against
# models/manifest.toml). Models come from ALPR_MODEL_MIRROR, else ../shared/models when
# that folder exists (the team's offline mirror), else their upstream URLs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL_MIRROR ?= $(or $(ALPR_MODEL_MIRROR),$(wildcard ../shared/models))
MIRROR_ARG := $(if $(MODEL_MIRROR),--mirror $(MODEL_MIRROR),)

.PHONY: demo test lint models system-deps bench clean

# Debian packages first: simpleaudio compiles against libasound2-dev.
$(STAMP): pyproject.toml scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

models: $(STAMP)
	$(BIN)/alpr-edge models fetch $(MIRROR_ARG)

demo: models
	$(BIN)/alpr-edge demo

# Debian packages the project and its tests need (see the script); root installs what is missing.
system-deps:
	scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: system-deps models lint
	ALPR_MODEL_MIRROR=$(MODEL_MIRROR) $(BIN)/pytest

bench: models
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
