"""SIGKILL at random points of `export-archive export` on a 34 MB model.

Each kill must leave the output path absent or holding a complete SavedModel (a
fresh export), or the complete previous or complete new one (--overwrite); the
next run must clean what the killed one left, and a normal run afterwards must
succeed with no leftovers.

Kill points are drawn (seeded) over four phases of the run, each found by polling
the files rather than by sleeping, so kills land where they matter:
- load: a random time before the staging directory appears (model load, tracing);
- write: once the staging directory holds a random fraction of the variables' bytes;
- rename: 0-10 ms after saved_model.pb appears in staging (fsync, the publishing
  rename, the removal of the replaced export);
- published: 0-5 ms after the output changed (clean-up and report after publish).
Runs are forked from a warm process (helpers/fault_models.Zygote) to save a
TensorFlow import per kill.
"""

import os
import random
import shutil
import signal
import time

import pytest

from helpers import fault_models as fm

pytestmark = pytest.mark.faults

PHASES = ("load", "write", "rename", "published")
MODES = ("fresh", "overwrite")
PER_CELL = 4   # 2 modes x 4 phases x 4 = 32 runs; some finish before their kill
_rng = random.Random(15)
PLAN = [(mode, phase, _rng.random()) for mode in MODES for phase in PHASES
        for _ in range(PER_CELL)]
_rng.shuffle(PLAN)
FULL_LOAD = {0, len(PLAN) // 2, len(PLAN) - 1}   # a few get the TF Serving-style load


class KillBench:
    def __init__(self, zygote, root):
        self.zygote, self.root = zygote, root
        self.parent = os.path.join(root, "models")
        self.out = os.path.join(self.parent, "model")
        os.makedirs(self.parent)
        self.results, self.runs = [], 0
        models = fm.save_models(zygote, root, {"big": 4096, "small": 16})
        self.big, self.small = models["big"], models["small"]
        self.previous = os.path.join(root, "previous")
        assert self.export(self.small, self.previous, "previous").status == 0
        self.small_info = fm.inspect(zygote, self.previous, root)
        # Calibration: one whole overwrite run, timing when staging appears.
        self.reset("overwrite")
        started = time.monotonic()
        pid = self.spawn("overwrite")
        assert fm.wait_for(lambda: self.own_staging(pid), 120)
        self.t_staging = time.monotonic() - started
        assert zygote.wait(pid) == 0
        self.big_info = fm.inspect(zygote, self.out, root)
        assert self.big_info["state"] == "complete", self.big_info
        self.variables_bytes = 4 * self.big_info["elements"]

    def export(self, model, out, endpoint, overwrite=False, log=None):
        return self.zygote.run(fm.export_argv(model, out, endpoint, overwrite),
                               log=log or os.path.join(self.root, "export"))

    def spawn(self, mode):
        self.runs += 1
        return self.zygote.spawn(fm.export_argv(self.big, self.out, "serve",
                                                mode == "overwrite"),
                                 log=os.path.join(self.root, f"run{self.runs}"))

    def reset(self, mode):
        """The output as the run expects it; staging leftovers are left alone."""
        if os.path.lexists(self.out):
            shutil.rmtree(self.out)
        if mode == "overwrite":
            shutil.copytree(self.previous, self.out)

    def own_staging(self, pid):
        return [n for n in fm.staging_leftovers(self.parent) if f".tmp-{pid}-" in n]

    def staged_bytes(self, pid):
        total = 0
        for name in self.own_staging(pid):
            for dirname, _, files in os.walk(os.path.join(self.parent, name)):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(dirname, f))
                    except OSError:
                        pass   # renamed or removed by the writer meanwhile
        return total

    def has_pb(self, pid):
        return any(os.path.exists(os.path.join(self.parent, n, "saved_model.pb"))
                   for n in self.own_staging(pid))

    def output_id(self):
        try:
            return os.stat(self.out).st_ino
        except FileNotFoundError:
            return None


@pytest.fixture(scope="module")
def bench(zygote, tmp_path_factory):
    bench = KillBench(zygote, str(tmp_path_factory.mktemp("kill")))
    yield bench
    killed = sum(1 for r in bench.results if r["status"] == -signal.SIGKILL)
    by_phase = ", ".join(
        f"{p} {sum(1 for r in bench.results if r['phase'] == p and r['status'] < 0)}/"
        f"{sum(1 for r in bench.results if r['phase'] == p)}" for p in PHASES)
    fm.report("kill", len(bench.results), sum(1 for r in bench.results if r["held"]),
              f"SIGKILLed {killed}, the others finished first; killed/tried by phase: "
              + by_phase)


def _trigger(bench, pid, phase, u, before):
    """Waits for the kill point of `phase` (u in [0, 1) draws within it)."""
    if phase == "load":
        deadline = time.monotonic() + u * bench.t_staging
        while time.monotonic() < deadline and not bench.own_staging(pid):
            time.sleep(0.002)
    elif phase == "write":
        target = u * bench.variables_bytes
        fm.wait_for(lambda: bench.staged_bytes(pid) >= target or bench.has_pb(pid), 120)
    elif phase == "rename":
        fm.wait_for(lambda: bench.has_pb(pid) or bench.output_id() != before, 120)
        time.sleep(u * 0.01)
    else:
        fm.wait_for(lambda: bench.output_id() != before, 120)
        time.sleep(u * 0.005)


@pytest.mark.parametrize("index", range(len(PLAN)))
def test_sigkill_leaves_previous_or_new_export(bench, index):
    mode, phase, u = PLAN[index]
    bench.reset(mode)
    leftovers_before = set(fm.staging_leftovers(bench.parent))
    before = bench.output_id()
    pid = bench.spawn(mode)
    _trigger(bench, pid, phase, u, before)
    own_seen = bool(bench.own_staging(pid)) or bench.output_id() != before
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass   # already exited; still reaped below
    status = bench.zygote.wait(pid)
    record = {"mode": mode, "phase": phase, "status": status, "held": False}
    bench.results.append(record)

    state = fm.inspect(bench.zygote, bench.out, bench.root, full=index in FULL_LOAD)
    new = ("complete", bench.big_info["elements"])
    previous = ("complete", bench.small_info["elements"])
    allowed = {new, ("absent", None)} if mode == "fresh" else {new, previous}
    got = (state["state"], state.get("elements"))
    assert got in allowed, f"{mode} kill in {phase} (status {status}) left {state}"
    if got == new:
        assert "serve" in state["signatures"], state
    elif got == previous:
        assert "previous" in state["signatures"], state
    if status == 0:
        assert got == new   # it finished before the kill: it must have published
    # The kill may leave this run's staging; what earlier kills left must be gone
    # once this run got as far as creating its own (it cleans stale ones first).
    leftovers = set(fm.staging_leftovers(bench.parent))
    if own_seen:
        assert not (leftovers & leftovers_before), (leftovers, leftovers_before)
    assert all(f".tmp-{pid}-" in n for n in leftovers - leftovers_before), leftovers
    record["held"] = True


@pytest.mark.parametrize("mode", MODES)
def test_normal_run_after_kills_succeeds_without_leftovers(bench, mode):
    bench.reset(mode)
    run = bench.export(bench.big, bench.out, "serve", overwrite=mode == "overwrite",
                       log=os.path.join(bench.root, f"final-{mode}"))
    assert run.status == 0, run
    state = fm.inspect(bench.zygote, bench.out, bench.root, full=True)
    assert state["state"] == "complete" and "serve" in state["signatures"], state
    assert state["elements"] == bench.big_info["elements"]
    assert fm.staging_leftovers(bench.parent) == []
    assert os.listdir(bench.parent) == ["model"]


def test_at_least_20_kills_landed_in_load_write_and_rename(bench):
    if len(bench.results) < len(PLAN):
        pytest.skip("needs the whole kill series of this module")
    killed = [r for r in bench.results if r["status"] == -signal.SIGKILL]
    assert len(killed) >= 20, bench.results
    # After publishing, a run has only an fsync and its exit left: on an idle machine
    # it often wins the race against the kill, so that phase is not required.
    assert {r["phase"] for r in killed} >= {"load", "write", "rename"}, bench.results
