#!/usr/bin/env python
"""Scale benchmark: a recommender-shaped model at 0.25-8 GiB of weights (issue 24).

Usage (from the repo root, with the project virtualenv):

    .venv/bin/python bench/bench_scale.py [--sizes 0.25,1,4,8] [--flavors keras3,tf_keras]
        [--work /tmp/scale-bench] [--budget-gib N] [--pipeline-gib 1] [--profile-gib 1]
        [--out docs/benchmarks.md] [--json bench/results_scale.json]

The model: a string `item` input, a `StringLookup` over a vocabulary of 1M tokens, an
`Embedding` table of 64 floats per row holding nearly all the weights (rows = size / 256
bytes, at least the vocabulary), and a small Dense tower. Keras 3 models are saved as
`.keras`, tf_keras models as a SavedModel (what a TFX Trainer writes).

For every (flavor, size), side by side in one run, each in fresh processes:
  - `export-archive export --check` and `--no-check` (the CLI as a user runs it);
  - stock `model.export()` and a hand-written `ExportArchive` (load, track, one endpoint,
    write_out);
measuring wall time, the peak RSS of the whole process tree (the CLI's check process and
any Beam worker included; polled with psutil), `saved_model.pb` size, and a cold
TF1-loader load (TF Serving's path) of each result: time and RSS growth. A tree whose
RSS would pass the memory budget is killed and recorded as out of memory, as is one the
kernel kills; neither is skipped. The disk's write bandwidth is measured in the same run;
a tiny model of the same shape gives each method's fixed start-up cost.

`--profile-gib` adds a memory profile: the Python API's export with the check on, in one
process sampled every 20 ms with its check process, with the phases (load, trace, write,
check) marked, once as a user runs it and once with `TF_ENABLE_ONEDNN_OPTS=0`. It says
which step and which process hold the memory. `--pipeline-gib` runs ModelExporter in a
LocalDagRunner pipeline (Importer -> ModelExporter, SQLite ML Metadata) at that size.

The parent never imports TensorFlow. Results: `bench/results_scale.json` and the
"Big models" section of `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_export import dir_size, worker_load  # noqa: E402  (TF imported in workers only)

MARKER = "BENCH_JSON:"
GIB = 1 << 30
MIB = 1 << 20
VOCAB = 1_000_000
DIM = 64                       # floats per embedding row
TOWER = 32
TINY_DIM = 1                   # the fixed-cost reference: same graph and vocabulary, 4 MiB
# What is compared, in this order: (name, label in the table).
METHOD_LABELS = dict([("cli_check", "`export-archive export --check`"),
                      ("cli_no_check", "`export-archive export --no-check`"),
                      ("model_export", "`model.export()`"),
                      ("hand_archive", "hand-written `ExportArchive`")])
METHODS = list(METHOD_LABELS)
GOALS = {"peak_check": 2.2, "peak_no_check": 1.3, "time_vs_bound": 2.0,
         "pb_vs_weights": 0.01, "load_vs_weights": 1.1}
BIN = os.path.dirname(sys.executable)
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


def log(msg):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def emit(payload):
    print(MARKER + json.dumps(payload), flush=True)


# --------------------------------------------------------------------------- workers (TF)


def _tf():
    import warnings
    warnings.filterwarnings("ignore")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf


def _table(gib):
    """(rows, floats per row) of the embedding table for `gib` GiB (0: the reference)."""
    if gib <= 0:
        return VOCAB + 1, TINY_DIM
    return max(int(gib * GIB) // (DIM * 4), VOCAB + 1), DIM


def worker_make(flavor, gib, path):
    """Builds the recommender and saves it the way its Trainer would."""
    _tf()
    import numpy as np
    K = __import__("tf_keras" if flavor == "tf_keras" else "keras")
    tokens = [f"item_{i}" for i in range(VOCAB)]
    rows, dim = _table(gib)
    # Keras 3 is built with the smallest table the vocabulary allows and the saved file's
    # table grown afterwards (`_grow_keras_table`): creating and saving an 8 GiB Keras 3
    # variable holds ~3 copies of it, which kills the bench before it measures anything.
    built_rows = min(rows, VOCAB + 1) if flavor == "keras3" else rows
    item = K.Input(shape=(), dtype="string", name="item")
    index = K.layers.StringLookup(vocabulary=tokens, name="item_lookup")(item)
    # Zeros: building must not hold a random copy of 8 GiB; the values play no part.
    vector = K.layers.Embedding(built_rows, dim, embeddings_initializer="zeros",
                                name="item_embedding")(index)
    hidden = K.layers.Dense(TOWER, activation="relu", name="tower")(vector)
    score = K.layers.Dense(1, name="score")(hidden)
    model = K.Model(item, score, name=f"recommender_{flavor}")
    model(np.array(["item_1", "unknown"]))
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights) + (
        rows - built_rows) * dim * 4
    t0 = time.perf_counter()
    if flavor == "tf_keras":
        model.save(path, save_format="tf")
    else:
        # Keras writes model.weights.h5 into an in-memory buffer when the weights are under
        # half the free memory, and copies it once more into the zip. Its own temp-file
        # path writes the same .keras file; the save is not what is measured.
        from keras.src.saving import saving_lib
        saving_lib.is_memory_sufficient = lambda model: False
        model.save(path)
        if rows != built_rows:
            _grow_keras_table(path, "item_embedding", built_rows, rows)
    emit({"weight_bytes": weight_bytes, "rows": rows, "dim": dim, "vocab": VOCAB,
          "n_weights": len(model.weights), "save_s": time.perf_counter() - t0,
          "file_bytes": dir_size(path) if os.path.isdir(path) else os.path.getsize(path)})


def _grow_keras_table(path, layer, built_rows, rows):
    """Rewrites a saved `.keras` file as if `layer`'s table had `rows` rows of zeros: its
    config says so and its HDF5 dataset is written in 64 MiB chunks, the rest unchanged
    (a stored zip, as Keras writes it)."""
    import zipfile
    import h5py
    import numpy as np
    small_h5, big_h5, grown = path + ".small.h5", path + ".big.h5", path + ".grown"
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist() if name != "model.weights.h5"}
        with src.open("model.weights.h5") as f, open(small_h5, "wb") as out:
            shutil.copyfileobj(f, out, 64 * MIB)
    config = json.loads(members["config.json"])
    grown_layers = [entry for entry in config["config"]["layers"]
                    if entry["config"]["name"] == layer]
    assert len(grown_layers) == 1 and grown_layers[0]["config"]["input_dim"] == built_rows
    grown_layers[0]["config"]["input_dim"] = rows
    members["config.json"] = json.dumps(config).encode()
    with h5py.File(small_h5, "r") as small, h5py.File(big_h5, "w") as big:
        tables = []

        def copy(name, obj):
            # Keras names the groups by class ("layers/embedding/vars/0"): the table is
            # found by its rows. Copied item by item, the small table left out, so the
            # file holds no dead space.
            if isinstance(obj, h5py.Group):
                group = big.require_group(name)
            elif obj.shape[:1] == (built_rows,):
                tables.append(name)
                group = big.create_dataset(name, shape=(rows,) + obj.shape[1:], dtype=obj.dtype)
            else:
                small.copy(obj, big[os.path.dirname(name) or "/"], name=os.path.basename(name))
                return
            for key, value in obj.attrs.items():
                group.attrs[key] = value
        for key, value in small.attrs.items():
            big.attrs[key] = value
        small.visititems(copy)
        assert len(tables) == 1, tables
        table = big[tables[0]]
        row_shape = table.shape[1:]
        step = max(1, 64 * MIB // (int(np.prod(row_shape)) * table.dtype.itemsize))
        zeros = np.zeros((step,) + row_shape, table.dtype)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            table[start:stop] = zeros[:stop - start]
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(grown, "w") as out:
        for name in src.namelist():
            if name == "model.weights.h5":
                out.write(big_h5, name)
            else:
                out.writestr(src.getinfo(name), members[name])
    os.replace(grown, path)
    os.remove(small_h5)
    os.remove(big_h5)


def _load(flavor, path):
    if flavor == "tf_keras":
        import tf_keras
        return tf_keras.models.load_model(path)
    import keras
    return keras.saving.load_model(path)


def worker_stock(method, flavor, model_path, out):
    """`model.export()` or a hand-written ExportArchive, as a user writes them."""
    tf = _tf()
    t0 = time.perf_counter()
    model = _load(flavor, model_path)
    loaded = time.perf_counter()
    signature = [tf.TensorSpec([None], tf.string, name="item")]
    if method == "model_export":
        if flavor == "tf_keras":
            model.export(out)
        else:
            model.export(out, format="tf_saved_model", verbose=False)
    else:
        K = __import__("tf_keras" if flavor == "tf_keras" else "keras")
        archive = K.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda x: model(x, training=False),
                             input_signature=signature)
        archive.write_out(out) if flavor == "tf_keras" else archive.write_out(out, verbose=False)
    emit({"load_s": loaded - t0, "export_s": time.perf_counter() - loaded})


def worker_cold_load(path):
    """TF Serving's loader on the exported SavedModel: time and RSS it adds."""
    _tf()
    emit(worker_load(path))


def worker_profile(flavor, model_path, out):
    """The Python API's export with the check, phases marked, RSS of this process and its
    children sampled every 20 ms (the parent adds the sampling of the whole tree)."""
    _tf()
    import psutil
    import export_archive
    from export_archive import archive as archive_module
    from export_archive import writer
    me = psutil.Process()
    samples, marks = [], []
    t_start = time.perf_counter()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            kids = 0
            for child in me.children(recursive=True):
                try:
                    kids += child.memory_info().rss
                except psutil.Error:
                    pass
            samples.append((time.perf_counter() - t_start, me.memory_info().rss, kids))
            stop.wait(0.02)

    def marked(name, fn):
        def wrapper(*args, **kwargs):
            marks.append((name, "start", time.perf_counter() - t_start))
            try:
                return fn(*args, **kwargs)
            finally:
                marks.append((name, "end", time.perf_counter() - t_start))
        return wrapper

    writer.ModelSource.wrap = staticmethod(marked("load", writer.ModelSource.wrap))
    writer.build_archive = marked("trace", writer.build_archive)
    archive_module._ArchiveBase.write_out = marked("write", archive_module._ArchiveBase.write_out)
    writer._serving_check = marked("check", writer._serving_check)
    from export_archive import vocabularies
    vocabularies._file_backed = marked("vocabulary", vocabularies._file_backed)
    if flavor == "keras3":   # inside "load": Keras reading the weights into the built model
        from keras.src.saving import saving_lib
        saving_lib._load_state = marked("load_weights", saving_lib._load_state)
    from export_archive import check
    contract_memory = []
    run_contract = check.run_contract

    def recording(*args, **kwargs):
        contract = run_contract(*args, **kwargs)
        contract_memory.append(contract.get("memory"))   # the check process's own figures
        return contract
    check.run_contract = recording
    baseline = me.memory_info().rss        # TensorFlow and the package imported
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    export_archive.export(model_path, {"endpoints": [{"name": "serve"}]}, out, check=True)
    stop.set()
    thread.join()
    phases = {}
    for name in ("load", "load_weights", "vocabulary", "trace", "write", "check"):
        start = next((t for n, e, t in marks if n == name and e == "start"), None)
        end = next((t for n, e, t in reversed(marks) if n == name and e == "end"), None)
        if start is None or end is None:
            continue
        inside = [s for s in samples if start <= s[0] <= end] or [min(
            samples, key=lambda s: abs(s[0] - end))]
        phases[name] = {
            "start_s": start, "end_s": end,
            "main_rss_start": inside[0][1], "main_rss_end": inside[-1][1],
            "main_rss_peak": max(s[1] for s in inside),
            "children_rss_peak": max(s[2] for s in inside),
            "tree_rss_peak": max(s[1] + s[2] for s in inside),
        }
    emit({"phases": phases, "main_baseline": baseline,
          "check_process": contract_memory[0] if contract_memory else None,
          "tree_rss_peak": max(s[1] + s[2] for s in samples),
          "tree_peak_at_s": max(samples, key=lambda s: s[1] + s[2])[0],
          "main_rss_peak": max(s[1] for s in samples),
          "children_rss_peak": max(s[2] for s in samples), "flavor": flavor})


def worker_pipeline(model_artifact, config_json, work):
    """Importer -> ModelExporter under LocalDagRunner with SQLite ML Metadata."""
    _tf()
    from tfx import v1 as tfx
    from export_archive.components import ModelExporter
    importer = tfx.dsl.Importer(source_uri=model_artifact,
                                artifact_type=tfx.types.standard_artifacts.Model
                                ).with_id("model_importer")
    exporter = ModelExporter(model=importer.outputs["result"], export_config=config_json)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="scale_bench", pipeline_root=os.path.join(work, "root"),
        components=[importer, exporter],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(work, "metadata.sqlite")))
    t0 = time.perf_counter()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    emit({"pipeline_s": time.perf_counter() - t0})


# --------------------------------------------------------------------------- parent


def tree_rss(proc):
    """RSS of a process and its descendants, and of its descendants alone."""
    import psutil
    try:
        kids = proc.children(recursive=True)
        main = proc.memory_info().rss
    except psutil.Error:
        return 0, 0
    children = 0
    for kid in kids:
        try:
            children += kid.memory_info().rss
        except psutil.Error:
            pass
    return main + children, children


def run_measured(cmd, budget, env=None, timeout=3600):
    """Runs `cmd`, polling its process tree's RSS every 50 ms; kills the tree (and says
    so) when it passes `budget` bytes. Returns wall time, peaks, exit and payload."""
    import psutil
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=full_env, cwd=REPO, start_new_session=True)
    proc = psutil.Process(popen.pid)
    peak = peak_children = 0
    over_budget = False
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda s, c: c.append(s.read()), args=(s, c), daemon=True)
               for s, c in ((popen.stdout, out_chunks), (popen.stderr, err_chunks))]
    for r in readers:
        r.start()
    while popen.poll() is None:
        total, children = tree_rss(proc)
        peak, peak_children = max(peak, total), max(peak_children, children)
        if total > budget:
            over_budget = True
            os.killpg(popen.pid, 9)
            break
        if time.perf_counter() - t0 > timeout:
            os.killpg(popen.pid, 9)
            break
        time.sleep(0.05)
    popen.wait()
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    stdout, stderr = "".join(out_chunks), "".join(err_chunks)
    lines = [l for l in stdout.splitlines() if l.startswith(MARKER)]
    outcome = "ok" if popen.returncode == 0 else (
        "out of memory (over the bench's budget, killed)" if over_budget else
        "killed by the kernel (SIGKILL: out of memory)" if popen.returncode == -9 else
        f"failed (exit {popen.returncode})")
    if outcome != "ok":
        log(f"  {outcome}: {' '.join(cmd[-4:])}\n{stderr[-1500:]}")
    return {"outcome": outcome, "wall_s": wall, "tree_rss_peak": peak,
            "children_rss_peak": peak_children,
            "payload": json.loads(lines[-1][len(MARKER):]) if lines else None,
            "stderr_tail": stderr[-600:] if outcome != "ok" else ""}


def worker_cmd(*args):
    return [sys.executable, os.path.abspath(__file__), "--worker", *map(str, args)]


def cli_cmd(model_path, out, check):
    config = json.dumps({"endpoints": [{"name": "serve"}]})
    return [os.path.join(BIN, "export-archive"), "export", "--model", model_path,
            "--config", config, "--output", out, "--check" if check else "--no-check"]


def drop_page_cache():
    """A cold load reads from disk: as root, ask the kernel to drop clean pages."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def write_bandwidth(work, nbytes=GIB):
    """Bytes per second for a sequential write and fsync, as the export's publish does."""
    path = os.path.join(work, "bandwidth.bin")
    block = os.urandom(4 * MIB)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    os.remove(path)
    return nbytes / seconds


def pb_bytes(path):
    pb = os.path.join(path, "saved_model.pb")
    return os.path.getsize(pb) if os.path.exists(pb) else None


def measure_size(flavor, gib, work, budget, drop_cache):
    label = f"{flavor} {gib:g} GiB" if gib > 0 else f"{flavor} tiny"
    here = os.path.join(work, f"{flavor}-{gib:g}")
    shutil.rmtree(here, ignore_errors=True)
    os.makedirs(here)
    model_path = os.path.join(here, "model.keras" if flavor == "keras3" else "model")
    log(f"{label}: building the model")
    made = run_measured(worker_cmd("make", flavor, gib, model_path), budget)
    row = {"flavor": flavor, "gib": gib, "make": made, "methods": {}}
    if made["outcome"] != "ok":
        return row
    row.update(made["payload"])
    for method in METHODS:
        out = os.path.join(here, method)
        log(f"{label}: {method}")
        if method.startswith("cli"):
            result = run_measured(cli_cmd(model_path, out, method == "cli_check"), budget)
        else:
            result = run_measured(worker_cmd("stock", method, flavor, model_path, out), budget)
        result["pb_bytes"] = pb_bytes(out) if result["outcome"] == "ok" else None
        result["artifact_bytes"] = dir_size(out) if result["outcome"] == "ok" else None
        if result["outcome"] == "ok":
            result["cold_cache"] = drop_cache and drop_page_cache()
            result["load"] = run_measured(worker_cmd("load", out), budget)
        row["methods"][method] = result
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(here, ignore_errors=True)
    return row


def profile(flavor, gib, work, budget):
    here = os.path.join(work, f"profile-{flavor}-{gib:g}")
    shutil.rmtree(here, ignore_errors=True)
    os.makedirs(here)
    model_path = os.path.join(here, "model.keras" if flavor == "keras3" else "model")
    made = run_measured(worker_cmd("make", flavor, gib, model_path), budget)
    runs = {"weight_bytes": (made["payload"] or {}).get("weight_bytes"), "runs": {}}
    for name, env in (("as_a_user_runs_it", {}), ("onednn_off", {"TF_ENABLE_ONEDNN_OPTS": "0"})):
        out = os.path.join(here, name)
        log(f"profile {flavor} {gib:g} GiB: {name}")
        runs["runs"][name] = run_measured(worker_cmd("profile", flavor, model_path, out),
                                          budget, env=env)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(here, ignore_errors=True)
    return runs


def pipeline(gib, work, budget):
    here = os.path.join(work, "pipeline")
    shutil.rmtree(here, ignore_errors=True)
    artifact = os.path.join(here, "trainer_model")
    os.makedirs(os.path.join(artifact, "Format-Serving"))
    made = run_measured(worker_cmd("make", "keras3", gib, os.path.join(
        artifact, "Format-Serving", "model.keras")), budget)
    log(f"pipeline at {gib:g} GiB")
    config = json.dumps({"endpoints": [{"name": "serve"}], "check": {"enabled": True}})
    result = run_measured(worker_cmd("pipeline", artifact, config, here), budget)
    result["weight_bytes"] = (made["payload"] or {}).get("weight_bytes")
    shutil.rmtree(here, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report


def fmt_bytes(n):
    if n is None:
        return "—"
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt_ratio(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}×"


def pct(x):
    return "—" if x is None else f"{100 * x:.3f}%"


def goal(value, limit):
    if value is None:
        return "—"
    return f"{value:.3g} {'✅' if value <= limit else '❌'}"


def analyse(results):
    """Adds the derived ratios in place: peak ÷ weights, time ÷ bandwidth bound."""
    bandwidth = results["write_bandwidth"]
    reference = {(r["flavor"], m): d for r in results["tiny"]
                 for m, d in r["methods"].items() if d["outcome"] == "ok"}
    for row in results["rows"]:
        w = row.get("weight_bytes")
        for method, d in row["methods"].items():
            d["peak_vs_weights"] = ratio(d["tree_rss_peak"], w)
            d["pb_vs_weights"] = ratio(d.get("pb_bytes"), w)
            bound = w / bandwidth if w else None
            ref = reference.get((row["flavor"], method))
            ok = d["outcome"] == "ok" and ref is not None and w
            d["time_vs_bound"] = (d["wall_s"] - ref["wall_s"]) / bound if ok else None
            d["peak_over_reference"] = ((d["tree_rss_peak"] - ref["tree_rss_peak"]) / w
                                        if ok else None)
            load = (d.get("load") or {}).get("payload")
            d["load_vs_weights"] = ratio(load["load_growth"], w) if load else None
            ref_load = ((ref or {}).get("load") or {}).get("payload")
            d["load_over_reference"] = ((load["load_growth"] - ref_load["load_growth"]) / w
                                        if load and ref_load else None)


def weights_read(phases, base, w):
    d = phases.get("load_weights")
    if not d:
        return "—"
    return (f"{(d['main_rss_start'] - base) / w:.2f}× → {(d['main_rss_end'] - base) / w:.2f}× "
            f"({(d['main_rss_peak'] - base) / w:.2f}×)")


def _rows_of_run(results, date):
    rows = [f"{r['flavor']} {r['gib']:g} GiB" for r in results["rows"] if r.get("run") == date]
    return ", ".join(rows) + " (these rows are from it)" if rows else "the profile or pipeline"


def render(results):
    lines = ["## Big models: export, check and load at 0.25–8 GiB of weights", ""]
    env = results["env"]
    lines += [
        f"Measured {results['date']} by `bench/bench_scale.py` (total {results['total_min']:.1f} "
        f"min). **Machine:** {env['cpus']} CPUs, {fmt_bytes(env['mem_total'])} RAM, "
        f"{fmt_bytes(env['mem_available'])} available at the start; {env['platform']}; "
        f"{env['versions']}. Disk write bandwidth (1 GiB, fsync) in the same run: "
        f"{results['write_bandwidth'] / MIB:,.0f} MiB/s. Memory budget for a process tree: "
        f"{fmt_bytes(results['budget'])} (a tree passing it is killed and recorded as out of "
        "memory). " + "".join(
            f"A later run at {r['date']} (write bandwidth {r['write_bandwidth'] / MIB:,.0f} "
            f"MiB/s, budget {fmt_bytes(r['budget'])}) measured "
            f"{_rows_of_run(results, r['date'])}. "
            for r in results.get("later_runs", [])) + "Page cache dropped before each cold load: "
        f"{'yes' if results['cold_cache'] else 'no (not permitted here)'}.", "",
        f"**Model.** A string `item` input, `StringLookup` over {VOCAB:,} tokens, "
        f"`Embedding(rows, {DIM})` (zeros), `Dense({TOWER}, relu)`, `Dense(1)`. Keras 3 is "
        "saved as `.keras`, tf_keras as a SavedModel (a TFX Trainer's output). Every method is "
        "a fresh process run as a user runs it (default TF settings), from the saved file: "
        "TF import and model load are in its wall time. *Peak* is the largest RSS of the whole "
        "process tree (the check process included), polled every 50 ms, ÷ weight bytes. "
        "*Time ÷ bound* is (wall time − the same method's wall time on the reference model: "
        f"the same graph and vocabulary with 1 float per row, 4 MiB) ÷ (weight bytes ÷ write "
        "bandwidth). *Peak − reference* is the peak above that reference's peak ÷ weights: "
        "the part that grows with the model. *Cold load* is TF's TF1 loader "
        "(TF Serving's) in a fresh process: RSS growth ÷ weights.", "",
        "| flavor | weights | method | outcome | wall (s) | time ÷ bound | peak RSS | peak ÷ "
        "weights | peak − reference ÷ weights | saved_model.pb | pb ÷ weights | cold load (s) "
        "| load RSS ÷ weights | load − reference ÷ weights |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        w = row.get("weight_bytes")
        if row["make"]["outcome"] != "ok":
            lines.append(f"| {row['flavor']} | {row['gib']:g} GiB | (building the model) | "
                         f"{row['make']['outcome']} | | | {fmt_bytes(row['make']['tree_rss_peak'])}"
                         " | | | | | | | |")
            continue
        for method in METHODS:
            d = row["methods"].get(method)
            if d is None:
                continue
            load = (d.get("load") or {}).get("payload") or {}
            lines.append(
                f"| {row['flavor']} | {fmt_bytes(w)} | {METHOD_LABELS[method]} | {d['outcome']} | "
                f"{d['wall_s']:.1f} | {fmt_ratio(d['time_vs_bound'])} | "
                f"{fmt_bytes(d['tree_rss_peak'])} | {fmt_ratio(d['peak_vs_weights'])} | "
                f"{fmt_ratio(d['peak_over_reference'])} | {fmt_bytes(d.get('pb_bytes'))} | "
                f"{pct(d['pb_vs_weights'])} | {'—' if not load else round(load['load_s'], 1)} | "
                f"{fmt_ratio(d['load_vs_weights'])} | {fmt_ratio(d['load_over_reference'])} |")
    lines += ["", "### Goals (ours: the CLI export)", "",
              "| flavor | weights | peak ÷ weights, check on (≤ 2.2) | check off (≤ 1.3) | "
              "time ÷ bound, check off (≤ 2) | pb ÷ weights (≤ 1%) | cold load RSS ÷ weights "
              "(≤ 1.1) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        if row["make"]["outcome"] != "ok":
            continue
        on = row["methods"].get("cli_check", {})
        off = row["methods"].get("cli_no_check", {})
        pb = off.get("pb_vs_weights")
        lines.append(
            f"| {row['flavor']} | {fmt_bytes(row.get('weight_bytes'))} | "
            f"{goal(on.get('peak_vs_weights'), GOALS['peak_check']) if on.get('outcome') == 'ok' else on.get('outcome', '—')} | "
            f"{goal(off.get('peak_vs_weights'), GOALS['peak_no_check']) if off.get('outcome') == 'ok' else off.get('outcome', '—')} | "
            f"{goal(off.get('time_vs_bound'), GOALS['time_vs_bound'])} | "
            f"{pct(pb)}{'' if pb is None else (' ✅' if pb <= GOALS['pb_vs_weights'] else ' ❌')} | "
            f"{goal(off.get('load_vs_weights'), GOALS['load_vs_weights'])} |")
    if results.get("profile"):
        lines += ["", "### Memory profile: which step and which process hold the memory", ""]
        for flavor, prof in results["profile"].items():
            w = prof.get("weight_bytes")
            lines.append(f"`export_archive.export(<{'.keras' if flavor == 'keras3' else 'SavedModel'}"
                         f" path>, check=True)`, {flavor}, {fmt_bytes(w)} of weights. Growth of "
                         "RSS ÷ weights: the main process above its RSS once TensorFlow and the "
                         "package are imported, at the end (and peak) of each phase; the check "
                         "process above its own RSS before it reads the SavedModel (as it "
                         "reports it).")
            lines += ["", "| run | load end (peak) | trace end (peak) | write end (peak) | check: "
                      "main peak | check process: loaded (peak) | tree peak ÷ weights | Keras 3 "
                      "load: before reading weights → after (peak) |",
                      "|---|---:|---:|---:|---:|---:|---:|---|"]
            for name, run in prof["runs"].items():
                p = run.get("payload") or {}
                ph, base = p.get("phases", {}), p.get("main_baseline") or 0

                def r(phase, key="main_rss_end", peak="main_rss_peak"):
                    d = ph.get(phase)
                    if not d:
                        return "—"
                    return (f"{(d[key] - base) / w:.2f}× ({(d[peak] - base) / w:.2f}×)"
                            if peak else f"{(d[key] - base) / w:.2f}×")
                cp = p.get("check_process") or {}
                served = (f"{(cp['rss_loaded'] - cp['rss_before_load']) / w:.2f}× "
                          f"({(cp['peak_rss'] - cp['rss_before_load']) / w:.2f}×)"
                          if cp.get("rss_loaded") else "—")
                lines.append(f"| {name} ({run['outcome']}) | {r('load')} | {r('trace')} | "
                             f"{r('write')} | {r('check', 'main_rss_peak', None)} | {served} | "
                             f"{fmt_ratio(ratio(run['tree_rss_peak'], w))} | {weights_read(ph, base, w)} |")
            lines.append("")
    if results.get("pipeline"):
        p = results["pipeline"]
        lines += ["", f"**ModelExporter in a LocalDagRunner pipeline** (Importer → ModelExporter, "
                  f"SQLite ML Metadata, check on), Keras 3, {fmt_bytes(p.get('weight_bytes'))}: "
                  f"{p['outcome']}, wall {p['wall_s']:.1f} s, peak RSS of the tree "
                  f"{fmt_bytes(p['tree_rss_peak'])} = "
                  f"{fmt_ratio(ratio(p['tree_rss_peak'], p.get('weight_bytes')))} the weights."]
    lines += ["", "Raw numbers: `bench/results_scale.json`. Findings and what holds the memory: "
              "see the notes below the table (written from this run).", ""]
    return "\n".join(lines)


def replace_section(path, text, title="## Big models"):
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = doc.find(title)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        nxt = re.search(r"^## ", doc[start + len(title):], re.M)
        end = start + len(title) + nxt.start() if nxt else len(doc)
        # Hand-written notes under the section (### Notes) are kept.
        notes = doc.find("### Notes", start, end)
        keep = doc[notes:end] if notes >= 0 else ""
        doc = doc[:start] + text + ("\n" + keep if keep else "") + doc[end:]
    with open(path, "w") as f:
        f.write(doc)


def environment():
    import psutil
    versions = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf, keras, tf_keras, sys; "
         "print(f'Python {sys.version.split()[0]}, TensorFlow {tf.__version__}, "
         "Keras {keras.__version__}, tf_keras {tf_keras.__version__}')"],
        capture_output=True, text=True, env={**os.environ, **QUIET_ENV}).stdout.strip()
    vm = psutil.virtual_memory()
    return {"cpus": os.cpu_count(), "mem_total": vm.total, "mem_available": vm.available,
            "platform": platform.platform(), "versions": versions}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="0.25,1,4,8", help="GiB of weights, comma-separated")
    p.add_argument("--flavors", default="keras3,tf_keras")
    p.add_argument("--work", default="/tmp/scale-bench")
    p.add_argument("--budget-gib", type=float, default=None,
                   help="kill a process tree past this RSS (default: available − 1.5 GiB)")
    p.add_argument("--pipeline-gib", type=float, default=1.0, help="0: no pipeline run")
    p.add_argument("--profile-gib", type=float, default=1.0, help="0: no memory profile")
    p.add_argument("--profile-flavors", default=None, help="default: --flavors")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument("--json", default=os.path.join(HERE, "results_scale.json"))
    p.add_argument("--append", action="store_true",
                   help="add to the results in --json (e.g. the big sizes in a second run) "
                        "instead of starting anew; the reference rows are reused, and a "
                        "flavor and size measured again replace their earlier row")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "make":
            return worker_make(rest[0], float(rest[1]), rest[2])
        if kind == "stock":
            return worker_stock(*rest)
        if kind == "load":
            return worker_cold_load(*rest)
        if kind == "profile":
            return worker_profile(*rest)
        if kind == "pipeline":
            return worker_pipeline(*rest)
        raise SystemExit(f"unknown worker {kind}")

    started = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    env = environment()
    budget = int(args.budget_gib * GIB) if args.budget_gib else int(env["mem_available"] - 1.5 * GIB)
    sizes = [float(s) for s in args.sizes.split(",") if s]   # "": only profile / pipeline
    flavors = args.flavors.split(",")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = {"date": now, "env": env, "budget": budget, "cold_cache": drop_page_cache(),
           "write_bandwidth": write_bandwidth(args.work)}
    log(f"write bandwidth {run['write_bandwidth'] / MIB:.0f} MiB/s, budget {fmt_bytes(budget)}")
    if args.append and os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
        results.setdefault("later_runs", []).append(run)
        started -= results.get("total_min", 0) * 60
    else:
        results = {**run, "tiny": [], "rows": []}

    def save():
        # After every step, so a run cut short still leaves what it measured.
        results["total_min"] = (time.perf_counter() - started) / 60
        analyse(results)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        replace_section(args.out, render(results))

    have_reference = {r["flavor"] for r in results["tiny"]}
    for flavor in flavors if sizes else ():
        if flavor not in have_reference:
            results["tiny"].append(measure_size(flavor, 0, args.work, budget, False))
    # The profile and the pipeline first: they say where the memory goes.
    if args.profile_gib:
        results.setdefault("profile", {})
        for flavor in (args.profile_flavors or args.flavors).split(","):
            results["profile"][flavor] = profile(flavor, args.profile_gib, args.work, budget)
            save()
    if args.pipeline_gib:
        results["pipeline"] = pipeline(args.pipeline_gib, args.work, budget)
        save()
    for gib in sizes:
        for flavor in flavors:
            row = measure_size(flavor, gib, args.work, budget, run["cold_cache"])
            row["run"] = run["date"]
            # An --append run measures the code as it is now: its row replaces the one
            # an earlier run made of the same flavor and size, in the same place.
            same = [i for i, r in enumerate(results["rows"])
                    if (r["flavor"], r["gib"]) == (flavor, gib)]
            if same:
                results["rows"][same[0]] = row
            else:
                results["rows"].append(row)
            save()
    save()
    log(f"done in {results['total_min']:.1f} min: {args.json}, {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main() or 0)
