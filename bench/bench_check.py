"""Serving-check overhead: a CLI export with the check against one without, before and after.

What a user pays for `export-archive export --check`: the wall time of the whole
command (Python start, imports, model load, trace, write, check, rename), as a
subprocess, on a Keras 3 MLP of a few million parameters (`--params`, default
~4.7M as in issue 16). Four variants, interleaved round by round so that load on
the shared machine hits them alike:

* after / check, after / no check: the code in this checkout (`src/`);
* before / check, before / no check: `src/export_archive` of git revision
  `--before`, unpacked with `git archive` (read-only on the repo) and put first
  on `sys.path`, so both trees run in the same environment, side by side.

The figure is with-check / without-check per tree (target <= 1.2), medians over
`--rounds` rounds.

    python bench/bench_check.py [--rounds 3] [--before 09652ff] [--work /tmp/check-bench]
        [--out docs/benchmarks.md] [--json bench/results_check.json]
"""

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time

# The same docs file and results layout as the parity benchmark.
from bench_parity import add_output_args, replace_section as write_section

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SECTION = "## Serving-check overhead on a CLI export"
# The last commit with the check process started after the write (issue 16, part 4).
DEFAULT_BEFORE = "09652ff"
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
# Runs the CLI from a given source tree: the tree goes first on sys.path, ahead of
# the editable install's finder (a meta path finder consulted after sys.path).
LAUNCHER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "import export_archive.cli as cli; "
            "assert cli.__file__.startswith(sys.path[0]), cli.__file__; "
            "sys.exit(cli.main(sys.argv[1:]))")


def build_model(path, params):
    """A Keras 3 functional MLP with about `params` weights (width from the count)."""
    code = f"""
import keras, numpy as np
inputs = keras.Input((256,), name="features")
width = 1024
while 256 * width + 2 * width * width + width * 16 < {params}:
    width += 64
x = keras.layers.Dense(width, activation="relu")(inputs)
x = keras.layers.Dense(width, activation="relu")(x)
x = keras.layers.Dense(width, activation="relu")(x)
outputs = keras.layers.Dense(16, name="scores")(x)
model = keras.Model(inputs, outputs)
model(np.zeros((2, 256), "float32"))
model.save({path!r})
print(model.count_params())
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, **ENV})
    return int(out.stdout.strip().splitlines()[-1])


def unpack_tree(rev, work):
    """`src/export_archive` of git revision `rev` under `work/before-REV/`."""
    target = os.path.join(work, f"before-{rev}")
    if os.path.isdir(os.path.join(target, "export_archive")):
        return target
    data = subprocess.run(["git", "-C", REPO, "archive", rev, "src/export_archive"],
                          check=True, capture_output=True).stdout
    os.makedirs(target, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            prefix = "src/"
            if member.name.startswith(prefix):
                member.name = member.name[len(prefix):]
                tar.extract(member, target)
    return target


def run_export(tree, model, config, output, check):
    cmd = [sys.executable, "-c", LAUNCHER, tree, "export", "--model", model,
           "--config", config, "--output", output, "--overwrite",
           "--check" if check else "--no-check"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"export failed ({tree}, check={check}):\n{proc.stderr[-3000:]}")
    expected = "serving check: passed" if check else "serving check: not run"
    if expected not in proc.stdout:
        raise RuntimeError(f"expected {expected!r} in the CLI's output:\n{proc.stdout}")
    return seconds


def markdown(r):
    lines = [SECTION, "",
             f"Measured {r['date']} by `bench/bench_check.py` (total wall time "
             f"{r['total_wall_s'] / 60:.1f} min) on {r['machine']['cpus']} CPUs; load average "
             f"(1/5/15 min) {r['load_before']} before and {r['load_after']} after; the machine "
             "was shared with other engineers' jobs.", "",
             f"**What.** `export-archive export --model model.keras --config ... --check` "
             f"against `--no-check`, wall time of the whole command in a subprocess, on a "
             f"Keras 3 MLP of {r['params']:,} parameters (one `serve` endpoint, "
             "`float32[?,256]`). *Before* is `src/export_archive` of commit "
             f"`{r['before']}` (the check process started after the SavedModel was written), "
             "*after* is this checkout; both run in the same environment, interleaved "
             f"round by round, {r['rounds']} rounds. Target: with ÷ without ≤ 1.2.", "",
             "| code | without check, median (s) | with check, median (s) | with ÷ without "
             "(medians) | with ÷ without, per round | median of the rounds' ratios | target |",
             "|---|---:|---:|---:|---|---:|---|"]
    for tree in ("before", "after"):
        s = r["summary"][tree]
        worst = max(s["ratio"], s["median_round_ratio"])
        lines.append(f"| {tree} | {s['no_check_median_s']:.1f} | {s['check_median_s']:.1f} | "
                     f"**{s['ratio']:.2f}** | "
                     + ", ".join(f"{x:.2f}" for x in s["round_ratios"]) +
                     f" | **{s['median_round_ratio']:.2f}** | "
                     f"{'met' if worst <= 1.2 else 'missed'} |")
    lines += ["", "Every run (s), in the order they ran: " + "; ".join(
        f"{run['tree']} {'check' if run['check'] else 'no check'} {run['seconds']:.1f}"
        for run in r["runs"]) + ".", "", *r.get("notes", []), "",
              "Raw numbers: `bench/results_check.json`. Re-run: "
              "`.venv/bin/python bench/bench_check.py`.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", type=int, default=4_700_000)
    parser.add_argument("--before", default=DEFAULT_BEFORE,
                        help="git revision whose src/export_archive is the 'before' code")
    parser.add_argument("--work", default="/tmp/check-bench")
    add_output_args(parser, "results_check.json")
    args = parser.parse_args()
    if args.from_json:
        write_section(args.out, SECTION, markdown(json.load(open(args.json))))
        return
    start = time.perf_counter()
    load_before = "/".join(f"{x:.1f}" for x in os.getloadavg())
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, "model.keras")
    params = build_model(model, args.params)
    config = json.dumps({"endpoints": [{"name": "serve", "input_signature": ["float32[?,256]"]}]})
    trees = {"before": unpack_tree(args.before, args.work), "after": os.path.join(REPO, "src")}
    variants = [(tree, check) for tree in trees for check in (False, True)]
    runs = []
    for i in range(args.rounds):
        # Rotate the order each round: no variant always runs first after a pause.
        for tree, check in variants[i % 4:] + variants[:i % 4]:
            seconds = run_export(trees[tree], model, config,
                                 os.path.join(args.work, f"out-{tree}-{check}"), check)
            runs.append({"round": i, "tree": tree, "check": check, "seconds": seconds})
            print(tree, "check" if check else "no check", f"{seconds:.1f}s", flush=True)
    summary = {}
    for tree in trees:
        med = {check: statistics.median(r["seconds"] for r in runs
                                        if r["tree"] == tree and r["check"] == check)
               for check in (False, True)}
        # Also per round: the two runs of a round are next to each other in time,
        # so their ratio is the least touched by load that comes and goes.
        rounds = [next(r["seconds"] for r in runs if r["tree"] == tree and r["check"]
                       and r["round"] == i) /
                  next(r["seconds"] for r in runs if r["tree"] == tree and not r["check"]
                       and r["round"] == i) for i in range(args.rounds)]
        summary[tree] = {"no_check_median_s": med[False], "check_median_s": med[True],
                         "ratio": med[True] / med[False], "round_ratios": rounds,
                         "median_round_ratio": statistics.median(rounds)}
    results = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
               "params": params, "rounds": args.rounds, "before": args.before,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "load_before": load_before, "runs": runs, "summary": summary,
               "load_after": "/".join(f"{x:.1f}" for x in os.getloadavg()),
               "total_wall_s": time.perf_counter() - start}
    print(json.dumps(summary, indent=1))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    if args.out:
        write_section(args.out, SECTION, markdown(results))


if __name__ == "__main__":
    main()
