# Everything a fresh clone needs: `make run` trains the default job, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format install clean bench azurite

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/disttrain train --config configs/default.yaml

# Azurite (the Azure Blob emulator) for the storage tests, from npm into .tools/.
azurite:
	bash scripts/install-azurite.sh

test: $(STAMP) azurite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check disttrain launchers tests bench
	$(BIN)/ruff format --check disttrain launchers tests bench

format: $(STAMP)
	$(BIN)/ruff format disttrain launchers tests bench
	$(BIN)/ruff check --fix disttrain launchers tests bench

bench: $(STAMP)
	$(BIN)/python bench/coordinator_overhead.py

clean:
	rm -rf $(VENV) runs .disttrain
