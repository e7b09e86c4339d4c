"""Concurrent writers to one output path, with and without --overwrite.

A full `export-archive` process per writer and round would cost a TensorFlow
start per export (7-20 s here), and two processes started together rarely
publish at the same moment, so a race would seldom be tried at all. So:

1. The real export races, 20 rounds each way: two worker processes each run
   `export_archive.export` 40 times in a loop, and meet at a file barrier right
   before each publishing rename (the test wraps `publish.publish` to wait there;
   nothing else changes), so every round is a true collision at the rename.
   Without overwrite exactly one must win and the other get OutputExistsError;
   with it, the path holds one whole export (its own signature and variables).
2. The publish primitive under 6 processes x 30 rounds, through renameat2 and
   through the rename(2)-only fallback of systems without it.
3. A few races of the whole command line, for the exit codes and messages users
   see (exit 2 for the refused writer).
"""

import json
import multiprocessing
import os
import shutil

import pytest

from helpers import fault_models as fm

pytestmark = pytest.mark.faults

ROUNDS = 20


@pytest.fixture(scope="module")
def races(zygote, tmp_path_factory):
    """Runs the two looping workers once; the tests below judge each round."""
    root = str(tmp_path_factory.mktemp("races"))
    model = fm.save_models(zygote, root, {"small": 8})["small"]
    previous = os.path.join(root, "previous")
    run = zygote.run(fm.export_argv(model, previous, "previous"), log=previous)
    assert run.status == 0, run
    work = os.path.join(root, "work")
    os.makedirs(work)
    for r in range(ROUNDS):
        shutil.copytree(previous, os.path.join(work, f"old-{r}"))
    pids = [zygote.spawn(call="helpers.fault_models:race_exports", args=[work, me, ROUNDS],
                         log=os.path.join(root, f"worker{me}")) for me in (0, 1)]
    for me, pid in enumerate(pids):
        status = zygote.wait(pid, timeout=600)
        assert status == 0, fm.Run(status, os.path.join(root, f"worker{me}"))
    results = []
    for me in (0, 1):
        with open(os.path.join(work, f"result-{me}.json")) as f:
            results.append(json.load(f))
    names = [f"{kind}-{r}" for r in range(ROUNDS) for kind in ("new", "old")]
    states = fm.inspect_many(zygote, [os.path.join(work, n) for n in names], root)
    bench = {"work": work, "results": results, "held": {},
             "states": {n: states[os.path.join(work, n)] for n in names}}
    yield bench
    for kind in ("new", "old"):
        held = [v for k, v in bench["held"].items() if k.startswith(kind)]
        fm.report(f"concurrency ({'--overwrite' if kind == 'old' else 'no overwrite'})",
                  len(held), sum(held), "two writers meet at the rename each round")


@pytest.mark.parametrize("r", range(ROUNDS))
def test_without_overwrite_exactly_one_writer_wins(races, r):
    name = f"new-{r}"
    races["held"][name] = False
    outcomes = [res[name]["outcome"] for res in races["results"]]
    assert sorted(outcomes) == ["published", "refused"], outcomes
    winner = outcomes.index("published")
    loser = races["results"][1 - winner][name]
    assert "filled by another writer" in loser["message"], loser
    assert "overwrite" in loser["message"]
    state = races["states"][name]
    assert state["state"] == "complete", state
    assert f"writer{winner}" in state["signatures"], (state, winner)
    assert f"writer{1 - winner}" not in state["signatures"]
    races["held"][name] = True


@pytest.mark.parametrize("r", range(ROUNDS))
def test_with_overwrite_the_result_is_one_whole_export(races, r):
    name = f"old-{r}"
    races["held"][name] = False
    outcomes = [res[name]["outcome"] for res in races["results"]]
    # Each writer replaced something, and says so: nothing is replaced silently.
    assert outcomes == ["replaced", "replaced"], outcomes
    state = races["states"][name]
    assert state["state"] == "complete", state
    writers = [s for s in state["signatures"] if s.startswith("writer") or s == "previous"]
    assert writers in (["writer0"], ["writer1"]), state
    races["held"][name] = True


def test_no_staging_left_by_racing_writers(races):
    assert fm.staging_leftovers(races["work"]) == []


@pytest.mark.parametrize("overwrite,fallback", [(False, False), (True, False),
                                                (False, True), (True, True)],
                         ids=["noreplace", "exchange", "noreplace-fallback",
                              "exchange-fallback"])
def test_publish_primitive_under_many_processes(tmp_path, overwrite, fallback):
    writers, rounds, files = 6, 30, 20
    if overwrite:
        for r in range(rounds):
            os.makedirs(tmp_path / f"m{r}")
            (tmp_path / f"m{r}" / "part-0").write_text("previous")
    ctx = multiprocessing.get_context("spawn")   # no TensorFlow state to inherit
    # A timeout, so a failing worker breaks the barrier instead of hanging the rest.
    barrier, queue = ctx.Barrier(writers, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=fm.race_publish,
                         args=(str(tmp_path), me, rounds, overwrite, fallback, files,
                               barrier, queue), daemon=True) for me in range(writers)]
    for p in procs:
        p.start()
    outcomes = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    held = 0
    for r in range(rounds):
        got = sorted(outcomes[me][r] for me in range(writers))
        content = {(tmp_path / f"m{r}" / f"part-{i}").read_text() for i in range(files)}
        assert len(content) == 1, f"round {r}: a mix of writers {content}"
        if overwrite:
            assert got == ["replaced"] * writers, got
        else:
            assert got == ["published"] + ["refused"] * (writers - 1), got
            assert outcomes[int(content.pop())][r] == "published"
        held += 1
    assert fm.staging_leftovers(str(tmp_path)) == []
    fm.report(f"concurrency (publish primitive, {writers} processes, "
              f"{'exchange' if overwrite else 'noreplace'}"
              f"{', rename(2) fallback' if fallback else ''})", rounds, held)


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-overwrite", "overwrite"])
def test_two_command_lines_at_once(zygote, tmp_path, races, overwrite):
    model = os.path.join(os.path.dirname(races["work"]), "small.keras")
    out = str(tmp_path / "model")
    if overwrite:
        shutil.copytree(os.path.join(os.path.dirname(races["work"]), "previous"), out)
    pids = []
    for me in (0, 1):
        pids.append(zygote.spawn(fm.export_argv(model, out, f"cli{me}", overwrite),
                                 log=str(tmp_path / f"cli{me}")))
    runs = [fm.Run(zygote.wait(pid), str(tmp_path / f"cli{me}")) for me, pid in enumerate(pids)]
    state = fm.inspect(zygote, out, str(tmp_path))
    assert state["state"] == "complete", state
    if overwrite:
        assert [r.status for r in runs] == [0, 0], runs
        assert all("replaced the previous export" in r.stdout for r in runs), runs
        assert len([s for s in state["signatures"] if s.startswith("cli")]) == 1, state
    else:
        assert sorted(r.status for r in runs) == [0, 2], runs
        loser = runs[[r.status for r in runs].index(2)]
        assert "Traceback" not in loser.stderr
        assert "another writer" in loser.stderr or "not empty" in loser.stderr, loser
        winner = [r.status for r in runs].index(0)
        assert f"cli{winner}" in state["signatures"], state
    assert fm.staging_leftovers(str(tmp_path)) == []
