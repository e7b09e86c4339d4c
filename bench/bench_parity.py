"""Split-parity benchmark: the Beam parity job against the model's own serving throughput.

Builds the demo (main job's) model without the TFX pipeline: the penguin
Transform (`pipelines/modules/penguin_transform.py`) analyzed with tft_beam
over the shipped penguins.csv, the Keras 3 penguin model
(`pipelines/modules/penguin_model.py`) fitted on it, and the pipeline's
export config (`DEFAULT_EXPORT_CONFIG`: tf_example `serving_default` with
Transform, `serve_features`, `call_training`). Then it writes a synthetic eval
split of N tf.Examples (default 1,000,000; penguin-like rows drawn as
`pipelines/data/generate.py` draws them), gzip TFRecord shards as ExampleGen
writes them, and measures, in the same run, on the same records:

* model: the exported `serving_default` in a TF1 session (TF Serving's path),
  records in memory, batches of the parity block size (session.run time only);
* parity: `parity_beam.run_job` on the DirectRunner (in-process; 2 worker
  threads; 2 worker processes), wall time from pipeline construction to rows.

Each measurement runs in a fresh process; peak RSS is the largest sum of RSS
over the process tree (Beam's worker processes included), polled every 0.2 s.

    python bench/bench_parity.py [--examples 1000000]
        [--modes in_memory,multi_threading,multi_processing]
        [--work /tmp/parity-bench] [--out docs/benchmarks.md] [--json bench/results_parity.json]
"""

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SECTION = "## Split parity at scale (Beam RunInference)"
SHARDS = 4
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


# ---- the demo model, Transform graph and export (built once per --work dir)


def build_demo(work):
    """Transform graph, trained `model.keras` and its export, as the main job makes them."""
    import keras
    import tensorflow as tf
    import tensorflow_transform as tft

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers import tfx_fixtures
    from export_archive import examples, writer
    from export_archive.pipelines import pipeline
    from export_archive.pipelines.modules import penguin_model
    from export_archive.pipelines.modules import penguin_transform as pt

    paths = {"transform_graph": os.path.join(work, "transform_graph"),
             "model": os.path.join(work, "model.keras"),
             "export": os.path.join(work, "export"),
             "config": json.dumps(pipeline.DEFAULT_EXPORT_CONFIG)}
    builder = examples.ExampleEndpointBuilder(transform_graph_path=paths["transform_graph"])
    if os.path.exists(paths["model"]):
        # Re-exported every run, so the export always comes from the code measured.
        writer.export(paths["model"], paths["config"], paths["export"], overwrite=True,
                      example_builder=builder)
        return paths
    rows = list(csv.DictReader(open(os.path.join(
        REPO, "pipelines", "data", "penguins", "penguins.csv"))))
    # SchemaGen (infer_feature_shape=True) gives every required feature shape [1].
    raw_spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in pt.NUMERIC_FEATURES}
    raw_spec["island"] = tf.io.FixedLenFeature([1], tf.string)
    raw_spec[pt.LABEL_KEY] = tf.io.FixedLenFeature([1], tf.int64)
    data = [{**{n: [float(r[n])] for n in pt.NUMERIC_FEATURES}, "island": [r["island"]],
             pt.LABEL_KEY: [int(r[pt.LABEL_KEY])]} for r in rows]
    tfx_fixtures.build_transform_graph(paths["transform_graph"], fn=pt.preprocessing_fn,
                                       raw_spec=raw_spec, data=data)
    layer = tft.TFTransformOutput(paths["transform_graph"]).transform_features_layer()
    raw = {k: tf.constant([d[k] for d in data], dtype=s.dtype) for k, s in raw_spec.items()}
    transformed = layer(raw)
    labels = transformed.pop(pt.LABEL_KEY).numpy().reshape(-1)
    model = penguin_model.build_model(keras)
    model.fit({k: v.numpy() for k, v in transformed.items()}, labels, epochs=20,
              batch_size=penguin_model.BATCH_SIZE, verbose=0)
    model.save(paths["model"])
    writer.export(paths["model"], paths["config"], paths["export"], overwrite=True,
                  example_builder=builder)
    return paths


def write_examples(count, directory, shards=SHARDS):
    """`count` penguin-like tf.Examples in `shards` gzip TFRecord files (cached)."""
    import numpy as np
    import tensorflow as tf
    from export_archive.pipelines.data.generate import SPECIES, SPREAD

    done = os.path.join(directory, "_COUNT")
    if os.path.exists(done) and open(done).read() == str(count):
        return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                      if f.endswith(".gz"))
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(20261130)
    labels = rng.integers(0, len(SPECIES), count)
    values = rng.normal(np.array([m for m, _ in SPECIES])[labels], SPREAD).round(1)
    picks = rng.random(count)
    names = ["culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]
    files = [os.path.join(directory, f"data_tfrecord-{i:05d}-of-{shards:05d}.gz")
             for i in range(shards)]
    writers = [tf.io.TFRecordWriter(f, "GZIP") for f in files]
    for i in range(count):
        islands = SPECIES[labels[i]][1]
        feature = {"species": tf.train.Feature(int64_list=tf.train.Int64List(
                       value=[int(labels[i])])),
                   "island": tf.train.Feature(bytes_list=tf.train.BytesList(
                       value=[islands[int(picks[i] * len(islands))].encode()]))}
        for j, name in enumerate(names):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
                value=[values[i, j]]))
        writers[i % shards].write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    for w in writers:
        w.close()
    with open(done, "w") as f:
        f.write(str(count))
    return files


# ---- measurements (each in a fresh process)


def measure_model(paths, files, block_size, small_batch=64):
    """serving_default in a TF1 session over all records: batches of `block_size`
    (parity's block) and of `small_batch` (the old job's batch), records in memory;
    plus the time tf.data takes to read the records from the gzip shards."""
    import numpy as np
    import tensorflow as tf
    start = time.perf_counter()
    blocks = list(tf.data.TFRecordDataset(files, compression_type="GZIP")
                  .batch(block_size).as_numpy_iterator())
    read_s = time.perf_counter() - start
    records = np.concatenate(blocks)
    graph = tf.Graph()
    out = {"examples": len(records), "read_s": read_s, "session_s": {}}
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], paths["export"])
        sig = meta.signature_def["serving_default"]
        feed = graph.get_tensor_by_name(next(iter(sig.inputs.values())).name)
        fetches = [graph.get_tensor_by_name(v.name) for v in sig.outputs.values()]
        for batch in (block_size, small_batch):
            chunks = [records[i:i + batch] for i in range(0, len(records), batch)]
            sess.run(fetches, {feed: chunks[0]})   # warm up
            start = time.perf_counter()
            for chunk in chunks:
                sess.run(fetches, {feed: chunk})
            out["session_s"][batch] = time.perf_counter() - start
    n = len(records)
    out["examples_per_s"] = n / out["session_s"][block_size]
    out["small_batch"] = small_batch
    out["small_batch_examples_per_s"] = n / out["session_s"][small_batch]
    out["read_and_serve_examples_per_s"] = n / (read_s + out["session_s"][block_size])
    return out


def measure_parity(paths, files, block_size, mode, out_dir):
    import tensorflow  # noqa: F401  (import time is not the job's)
    from export_archive import parity_beam
    job = parity_beam.ParityJob(export_dir=paths["export"], model_path=paths["model"],
                                config_json=paths["config"],
                                transform_graph_path=paths["transform_graph"],
                                block_size=block_size)
    args = ["--runner=DirectRunner", f"--direct_running_mode={mode}"]
    if mode in ("multi_processing", "multi_threading"):
        args.append("--direct_num_workers=2")
    start = time.perf_counter()
    result = parity_beam.run_job(job, files, os.path.join(out_dir, f"parity-{mode}.jsonl"), args)
    seconds = time.perf_counter() - start
    count = max(r.get("count", 0) for r in result.rows)
    m = result.metrics
    # Where the time goes: RunInference's own latency metrics per side (summed over
    # workers), the rest is reading, moving blocks between steps, comparing, Beam.
    breakdown = {f"{side}_{what}_s": m[f"{side}:{metric}"]["sum"] / scale
                 for side in ("in_memory", "served")
                 for what, metric, scale in (("load", "load_model_latency_milli_secs", 1e3),
                                             ("inference", "inference_batch_latency_micro_secs",
                                              1e6))}
    for side in ("in_memory", "served"):
        # The first block's call traces the graphs (in memory) or warms the session.
        breakdown[f"{side}_first_block_s"] = m[
            f"{side}:inference_batch_latency_micro_secs"]["max"] / 1e6
    return {"examples": count, "seconds": seconds, "examples_per_s": count / seconds,
            "breakdown": breakdown, "rows": result.rows, "metrics": m}


def child(kind, paths, files, block_size, mode, out_dir):
    if kind == "model":
        result = measure_model(paths, files, block_size)
    else:
        result = measure_parity(paths, files, block_size, mode, out_dir)
    print("RESULT " + json.dumps(result))


def run_child(kind, paths, files, block_size, mode, out_dir):
    """Runs one measurement in a fresh process; adds its wall time and peak tree RSS."""
    import psutil
    spec = json.dumps({"kind": kind, "paths": paths, "files": files,
                       "block_size": block_size, "mode": mode, "out_dir": out_dir})
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} ({mode}) failed:\n{err[-4000:]}")
    result = json.loads(next(line for line in out.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    result.update(process_wall_s=time.perf_counter() - start, peak_rss_bytes=peak)
    return result


# ---- report


def markdown(results):
    r = results
    endpoints = ", ".join(
        f"`{e['name']}` ({e.get('kind', 'features')}"
        f"{', training: skipped' if e.get('training') else ''})"
        for e in r["export_config"]["endpoints"])
    lines = [SECTION, "",
             f"Measured {r['date']} by `bench/bench_parity.py` (total wall time "
             f"{r['total_wall_s'] / 60:.1f} min) on {r['machine']['cpus']} CPUs; load average "
             f"(1/5/15 min) {r['load_before']} before and {r['load_after']} after; the "
             "machine was shared with other engineers' jobs, so absolute times carry noise.",
             "",
             f"**What.** {r['examples']:,} synthetic penguin tf.Examples ({SHARDS} gzip "
             "TFRecord shards, as ExampleGen writes them) through the demo model: the main "
             "job's penguin Transform and Keras 3 model, exported with the pipeline's "
             f"`DEFAULT_EXPORT_CONFIG` (endpoints {endpoints}). Parity compares every "
             "inference endpoint on every record, each on both sides: the traced "
             "in-memory endpoint and the SavedModel in a TF1 session. Block size "
             f"{r['block_size']} records.",
             "",
             "**Model's own throughput**: `serving_default` in a TF1 session (TF "
             "Serving's path), session.run time only, in a fresh process of the same run, "
             "three ways: records in memory at the parity block size, records in memory at "
             "batch 64 (the batch of the job the issue measured), and reading the same "
             "gzip shards with tf.data plus session.run at the block size. "
             "**Parity**: `parity_beam.run_job` on the DirectRunner, wall time from "
             "pipeline construction to report rows (TF import excluded, model loads and "
             "Beam start-up included); peak RSS is the process tree's (Beam worker "
             "processes included). Target: parity ÷ model ≥ 0.67.",
             "",
             "| run | examples | time (s) | examples/s | peak RSS |",
             "|---|---:|---:|---:|---:|"]
    model = r["model"]
    n, bs, small = model["examples"], r["block_size"], model["small_batch"]
    gib = 2 ** 30
    lines.append(f"| model: session.run, batch {bs} (records in memory) | {n:,} | "
                 f"{model['session_s'][str(bs)]:.2f} | {model['examples_per_s']:,.0f} | "
                 f"{model['peak_rss_bytes'] / gib:.2f} GiB |")
    lines.append(f"| model: session.run, batch {small} (records in memory) | {n:,} | "
                 f"{model['session_s'][str(small)]:.2f} | "
                 f"{model['small_batch_examples_per_s']:,.0f} | |")
    lines.append(f"| model: tf.data read of the gzip shards + session.run, batch {bs} | "
                 f"{n:,} | {model['read_s'] + model['session_s'][str(bs)]:.2f} | "
                 f"{model['read_and_serve_examples_per_s']:,.0f} | |")
    for mode, p in r["parity"].items():
        lines.append(f"| **parity**, DirectRunner {mode} (wall) | {p['examples']:,} | "
                     f"{p['seconds']:.1f} | **{p['examples_per_s']:,.0f}** | "
                     f"{p['peak_rss_bytes'] / gib:.2f} GiB |")
    lines += ["", "Parity ÷ model (target ≥ 0.67):", "",
              f"| parity run | ÷ session batch {bs} | ÷ session batch {small} | "
              "÷ read + session |", "|---|---:|---:|---:|"]
    for mode, p in r["parity"].items():
        ratios = [p["examples_per_s"] / model[k] for k in
                  ("examples_per_s", "small_batch_examples_per_s",
                   "read_and_serve_examples_per_s")]
        lines.append(f"| {mode} | " + " | ".join(
            f"{x:.3f} ({'met' if x >= 0.67 else 'missed'})" for x in ratios) + " |")
    lines += ["", "Results and where the parity time goes (RunInference's latency metrics, "
              "summed over workers; the rest is reading, moving blocks between steps, "
              "comparing and Beam itself):", "",
              "| parity run | endpoints (count, max abs diff, result) | in-memory load / "
              "first block / all blocks (s) | served load / first block / all blocks (s) "
              "| rest (s) |", "|---|---|---:|---:|---:|"]
    for mode, p in r["parity"].items():
        b = p["breakdown"]
        res = "; ".join(f"`{row['endpoint']}` {row.get('count', 0):,}, "
                        f"{row.get('max_abs_diff', 0):.2g}, "
                        f"{'pass' if row['passed'] else 'FAIL'}" for row in p["rows"])
        # With several workers the latencies overlap in time: no wall-time remainder.
        rest = (f"{p['seconds'] - sum(b[f'{side}_{w}_s'] for side in ('in_memory', 'served') for w in ('load', 'inference')):.1f}"
                if mode == "in_memory" else "n/a")
        lines.append(f"| {mode} | {res} | {b['in_memory_load_s']:.1f} / "
                     f"{b['in_memory_first_block_s']:.1f} / {b['in_memory_inference_s']:.1f} | "
                     f"{b['served_load_s']:.1f} / {b['served_first_block_s']:.1f} / "
                     f"{b['served_inference_s']:.1f} | {rest} |")
    if r.get("scaling"):
        base = r["parity"].get("in_memory")
        sizes = sorted(r["scaling"].values(), key=lambda x: x["examples"])
        if base:
            sizes.append(base)
        lines += ["", "Peak RSS against split size (parity, DirectRunner in_memory): " + ", ".join(
            f"{x['examples']:,} records: {x['peak_rss_bytes'] / gib:.2f} GiB "
            f"({x['examples_per_s']:,.0f} examples/s)" for x in sizes) + "."]
    lines += ["", *r.get("notes", []), "",
              "Raw numbers: `bench/results_parity.json`. Re-run: "
              "`.venv/bin/python bench/bench_parity.py` (`--examples 20000` for a quick run).",
              ""]
    return "\n".join(lines)


def write_section(path, text):
    replace_section(path, SECTION, text)


def replace_section(path, section, text):
    """Puts `text` in place of the `## section` of the markdown file (or appends it)."""
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if section in doc:
        head, rest = doc.split(section, 1)
        nxt = rest.find("\n## ")
        doc = head + text + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(doc)


def add_output_args(parser, results_name):
    """--out (the docs file), --json (bench/RESULTS_NAME) and --from_json."""
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--json", default=os.path.join(HERE, results_name))
    parser.add_argument("--from_json", action="store_true",
                        help="only rewrite the docs section from the --json results")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--block_size", type=int, default=4096)
    parser.add_argument("--modes", default="in_memory,multi_threading,multi_processing")
    parser.add_argument("--scaling", default="100000,300000",
                        help="smaller splits to run in-process too, for peak RSS vs size")
    parser.add_argument("--work", default="/tmp/parity-bench")
    add_output_args(parser, "results_parity.json")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child(**spec)
        return
    if args.from_json:
        write_section(args.out, markdown(json.load(open(args.json))))
        return
    start = time.perf_counter()
    load_before = "/".join(f"{x:.1f}" for x in os.getloadavg())
    os.makedirs(args.work, exist_ok=True)
    os.environ.update(ENV)
    paths = build_demo(os.path.join(args.work, "demo"))
    files = write_examples(args.examples, os.path.join(args.work, f"eval-{args.examples}"))
    results = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
               "examples": args.examples, "block_size": args.block_size,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "load_before": load_before, "export_config": json.loads(paths["config"])}
    results["model"] = run_child("model", paths, files, args.block_size, "", args.work)
    print("model", {k: v for k, v in results["model"].items()}, flush=True)
    results["parity"] = {}
    for mode in args.modes.split(","):
        results["parity"][mode] = run_child("parity", paths, files, args.block_size, mode,
                                            args.work)
        p = results["parity"][mode]
        print(mode, p["examples"], f"{p['seconds']:.1f}s", f"{p['examples_per_s']:.0f}/s",
              f"ratio {p['examples_per_s'] / results['model']['examples_per_s']:.2f}",
              flush=True)
    # Memory against split size: the same in-process job on smaller splits.
    results["scaling"] = {}
    for count in [int(c) for c in args.scaling.split(",") if c]:
        small = write_examples(count, os.path.join(args.work, f"eval-{count}"))
        p = run_child("parity", paths, small, args.block_size, "in_memory", args.work)
        results["scaling"][count] = {k: p[k] for k in ("examples", "seconds",
                                                        "examples_per_s", "peak_rss_bytes")}
        print("scaling", count, f"{p['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    results["load_after"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    results["total_wall_s"] = time.perf_counter() - start
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    if args.out:
        write_section(args.out, markdown(results))


if __name__ == "__main__":
    main()
