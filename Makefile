# Every target sets the environment up first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run test test-unit test-integration test-e2e test-faults bench clean

setup:
	@bash scripts/setup.sh

## The main job: the local TFX pipeline (LocalDagRunner, embedded SQLite ML Metadata).
## Prints a line per component and a summary; TFX/Beam/TF output goes to a log file
## under runs/. Options go in ARGS, e.g. `make run ARGS="--verbose --keras 2"`.
run: setup
	@$(PY) -m export_archive.pipelines.local_runner $(ARGS)

## Everything that must pass: unit, integration, e2e and fault-suite tests.
test: setup
	$(PY) -m pytest -m "unit or integration or e2e or serving or faults" -q

test-unit: setup
	$(PY) -m pytest -m unit -q

test-integration: setup
	$(PY) -m pytest -m integration -q

test-e2e: setup
	$(PY) -m pytest -m e2e -q

test-faults: setup
	$(PY) -m pytest -m faults -q

bench: setup
	$(PY) bench/bench_export.py

clean:
	rm -rf runs .pytest_cache
