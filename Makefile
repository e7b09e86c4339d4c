# Every target sets the environment up first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run test test-unit test-integration test-e2e bench clean

setup:
	@bash scripts/setup.sh

## The main job: the local TFX pipeline (LocalDagRunner, embedded SQLite ML Metadata).
run: setup
	$(PY) -m export_archive.pipelines.local_runner

## Everything that must pass: unit, integration and e2e tests.
test: setup
	$(PY) -m pytest -m "unit or integration or e2e or serving" -q

test-unit: setup
	$(PY) -m pytest -m unit -q

test-integration: setup
	$(PY) -m pytest -m integration -q

test-e2e: setup
	$(PY) -m pytest -m e2e -q

bench: setup
	$(PY) bench/bench_export.py

clean:
	rm -rf runs .pytest_cache
