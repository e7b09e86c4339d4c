# Every target sets the environment up first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
# The current lane (TF 2.21, Keras 3.15, Python 3.12; no TFX): scripts/setup.sh current.
PYC := .venv-current/bin/python
# Both lanes run the same test files; what needs TFX skips itself in the current lane
# (pytest.importorskip("tfx")), saying so.
MARKERS := unit or integration or e2e or serving or faults
# The current lane turns deprecations raised from our own modules into errors, so an
# API that TF or Keras will remove fails a test now (third-party ones stay warnings).
CURRENT_WARNINGS := -W "error::DeprecationWarning:export_archive" \
	-W "error::PendingDeprecationWarning:export_archive"
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The slowest tests of each lane, at the end of its output (CI logs): where the
# suite's wall time goes.
DURATIONS := --durations=30

.PHONY: setup setup-current run test test-pinned test-current test-unit test-integration test-e2e test-faults bench clean

setup:
	@bash scripts/setup.sh

setup-current:
	@bash scripts/setup.sh current

## The main job: the local TFX pipeline (LocalDagRunner, embedded SQLite ML Metadata).
## Prints a line per component and a summary; TFX/Beam/TF output goes to a log file
## under runs/. Options go in ARGS, e.g. `make run ARGS="--verbose --keras 2"`.
run: setup
	@$(PY) -m export_archive.pipelines.local_runner $(ARGS)

## Everything that must pass, in both lanes: the pinned TFX lane, then the current lane.
## (and the opportunistic TFX >= 1.17 lane where it installs). All run; the target fails
## if any does.
test: setup setup-current
	@status=0; \
	bash scripts/tfx_latest_lane.sh || status=1; \
	$(MAKE) --no-print-directory test-pinned || status=1; \
	$(MAKE) --no-print-directory test-current || status=1; \
	exit $$status

## The pinned TFX lane: Python 3.10, TFX 1.16, TF 2.16 (constraints.txt).
test-pinned: setup
	$(PY) -m pytest -m "$(MARKERS)" -q $(DURATIONS)

## The current lane: Python 3.12, TF 2.21, Keras 3.15, TFT 1.21 (constraints-current.txt).
test-current: setup-current
	$(PYC) -m pytest -m "$(MARKERS)" -q $(CURRENT_WARNINGS) $(DURATIONS)

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
