# The two commands of the README: `make run` (the main job) and `make test` (the whole suite).
# Both run scripts/setup.sh first: idempotent, under a second when nothing changed.
# `make test-fast` is the development lane: no Ray, no root, no notebooks or whole jobs.
VENV := .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: setup run test test-fast lint bench notebook clean

setup:
	@bash scripts/setup.sh

run: setup
	$(BIN)/x0tta6bl4 run $(RUN_ARGS)

# Two phases: two xdist workers for everything but the `serial` tests, then those alone.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not serial" --durations=25
	$(BIN)/python -m pytest -q -m serial --durations=5 tests/integration tests/unit tests/e2e

test-fast: setup
	$(BIN)/python -m pytest -q -n 2 -m "not ray and not root and not slow"

lint: setup
	$(BIN)/ruff check platform jobs tests
	$(BIN)/ruff format --check platform jobs tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_quality.py -k "not quality_gate"
	$(BIN)/python scripts/bandit_gate.py
	promtool check rules cluster/prometheus/rules.yaml

# JupyterLab (pinned in the lock) on the notebooks, with this virtualenv's kernel; NOTEBOOK_ARGS adds
# options, e.g. NOTEBOOK_ARGS="--no-browser --port 8899". As root (a container) it needs --allow-root.
notebook: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK_ARGS)

bench: setup
	$(BIN)/x0tta6bl4 bench mesh --json

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
