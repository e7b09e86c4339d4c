"""Split-wide parity as a Beam job (`export_archive.parity_beam`), on real models and
real Beam: in-process, and on the multi-process DirectRunner, where every DoFn and
model handler is pickled to another process as on Dataflow.

The model is a Keras 3 model over a real Transform graph (x scaled, color through a
vocabulary), exported with a tf_example, a features and a raw_features endpoint.
A drifting served model is made by exporting one model and swapping in the
variables of another model of the same architecture: the SavedModel then serves
other weights than the in-memory model, as a wrongly copied export would.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_archive import examples, memory, parity_beam, step, writer
from export_archive.errors import InputError
from helpers import tfx_fixtures as fx

pytestmark = pytest.mark.integration

FILES, PER_FILE, BLOCK = 2, 150, 64   # 3 blocks per file
CONFIG = {"endpoints": [
    {"name": "serving_default", "kind": "tf_example", "transform": True,
     "exclude_features": ["label"]},
    {"name": "serve_features"},
    {"name": "serve_raw", "kind": "raw_features", "transform": True,
     "exclude_features": ["label"]},
]}
ENDPOINTS = ["serve_features", "serve_raw", "serving_default"]
MULTI_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                 "--direct_num_workers=2"]


def export_model(tmp, name, transform_graph):
    model = fx.transform_model(keras)
    model.save(os.path.join(tmp, f"{name}.keras"))
    builder = examples.ExampleEndpointBuilder(transform_graph_path=transform_graph)
    writer.export(os.path.join(tmp, f"{name}.keras"), CONFIG, os.path.join(tmp, name),
                  example_builder=builder)
    return os.path.join(tmp, f"{name}.keras"), os.path.join(tmp, name)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("parity_beam"))
    transform_graph = fx.build_transform_graph(os.path.join(tmp, "transform_graph"))
    model_path, export_dir = export_model(tmp, "good", transform_graph)
    files = []
    for i in range(FILES):
        path = os.path.join(tmp, f"eval-{i}.gz")
        with tf.io.TFRecordWriter(path, "GZIP") as w:
            for record in fx.serialize(fx.transform_rows(PER_FILE, seed=i)):
                w.write(record)
        files.append(path)
    # The drifting export: "good"'s graph and config, another model's weights.
    _, other = export_model(tmp, "other", transform_graph)
    drift_dir = os.path.join(tmp, "drift")
    shutil.copytree(export_dir, drift_dir)
    shutil.rmtree(os.path.join(drift_dir, "variables"))
    shutil.copytree(os.path.join(other, "variables"), os.path.join(drift_dir, "variables"))
    return {"tmp": tmp, "transform_graph": transform_graph, "model": model_path,
            "export": export_dir, "drift": drift_dir, "files": files}


def job(assets, export_dir, **kwargs):
    return parity_beam.ParityJob(export_dir=export_dir, model_path=assets["model"],
                                 config_json=json.dumps(CONFIG),
                                 transform_graph_path=assets["transform_graph"],
                                 block_size=BLOCK, **kwargs)


def test_matching_export_passes_with_counts_diffs_and_metrics(assets):
    out = os.path.join(assets["tmp"], "pass.jsonl")
    result = parity_beam.run_job(job(assets, assets["export"]), assets["files"], out,
                                 ["--runner=DirectRunner"])
    total = FILES * PER_FILE
    assert [r["endpoint"] for r in result.rows] == ENDPOINTS
    for row in result.rows:
        assert row["check"] == "parity_split"
        assert row["passed"], row
        assert row["count"] == total and row["mismatches"] == 0
        assert 0 <= row["max_abs_diff"] <= 1e-5 and row["mismatch_examples"] == []
        assert f"{total} records" in row["detail"]
        name = row["endpoint"]
        assert result.metrics[f"{name}/examples"] == total
        assert result.metrics[f"{name}/mismatches"] == 0
        assert result.metrics[f"{name}/max_abs_diff_e9"]["max"] == round(
            row["max_abs_diff"] * 1e9)
    # Each side loaded once, ran every block, and counted examples (not blocks).
    for side in ("in_memory", "served"):
        assert result.metrics[f"{side}/model_loads"] == 1
        assert result.metrics[f"{side}:num_inferences"] == total
        assert result.metrics[f"{side}:inference_request_batch_size"]["max"] == BLOCK
    # The executor's interface: rows only, through the output file.
    rows = parity_beam.run(job(assets, assets["export"]), assets["files"][:1], out)
    assert [(r["endpoint"], r["passed"], r["count"]) for r in rows] == [
        (name, True, PER_FILE) for name in ENDPOINTS]


def test_drift_caught_on_multi_process_runner_with_first_mismatches(assets):
    out = os.path.join(assets["tmp"], "drift.jsonl")
    result = parity_beam.run_job(job(assets, assets["drift"], max_reported=3),
                                 assets["files"], out, MULTI_PROCESS)
    total = FILES * PER_FILE
    assert [r["endpoint"] for r in result.rows] == ENDPOINTS
    first_file = sorted(assets["files"])[0]
    for row in result.rows:
        assert not row["passed"], row
        assert row["count"] == total and row["mismatches"] > total // 2
        assert row["max_abs_diff"] > 1e-3
        # The first 3 mismatching records by (file, index), whichever worker saw them.
        samples = row["mismatch_examples"]
        assert len(samples) == 3
        assert all(s["file"] == first_file for s in samples)
        assert [s["index"] for s in samples] == sorted(s["index"] for s in samples)
        for s in samples:
            assert not np.allclose(s["expected"], s["served"], atol=1e-5)
            assert s["max_abs_diff"] == pytest.approx(
                np.abs(np.subtract(s["expected"], s["served"])).max())
            assert set(s["features"]) == {"x", "color", "label"}
            assert f"{os.path.basename(first_file)}#{s['index']}" in row["detail"]
        name = row["endpoint"]
        assert result.metrics[f"{name}/mismatches"] == row["mismatches"]
        # Beam 2.60's DirectRunner keeps one bundle's string set (Dataflow unions them).
        reported = result.metrics[f"{name}/mismatch_examples"]
        assert reported and all(r.rsplit("#", 1)[0] in assets["files"] for r in reported)
    # The models ran in the runner's worker processes, loaded at most once per worker
    # although each process ran several blocks.
    blocks = FILES * -(-PER_FILE // BLOCK)
    for side in ("in_memory", "served"):
        workers = result.metrics[f"{side}/workers"]
        assert workers and all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
        assert 1 <= result.metrics[f"{side}/model_loads"] <= 2 < blocks
        assert result.metrics[f"{side}:num_inferences"] == total


def test_record_block_pickles_packed_and_rebuilds_its_records(assets):
    """A block read in one process runs on tf.data's tensor as it is; pickled (a
    Reshuffle, a runner's data plane), it travels as one buffer plus lengths and is
    rebuilt record for record, including empty records."""
    import pickle
    (block, *_rest) = parity_beam.ReadRecordBlocks(BLOCK).process(assets["files"][0])
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        assets["files"][0], compression_type="GZIP").take(BLOCK)]
    assert list(block.records) == records and len(block) == BLOCK
    state = block.__getstate__()
    assert "_tensor" not in state and "_records" not in state
    assert state["data"] == b"".join(records)
    copy = pickle.loads(pickle.dumps(block))
    assert list(copy.records) == records and copy.start == 0
    assert copy.source == assets["files"][0]

    empty = parity_beam.RecordBlock("f", 7, np.array([0, 3, 0]), tensor=tf.constant(
        [b"", b"abc", b""]))
    assert list(pickle.loads(pickle.dumps(empty)).records) == [b"", b"abc", b""]


@pytest.mark.parametrize("args, workers", [
    ([], 1),
    (["--runner=DirectRunner"], 1),
    (["--direct_num_workers=4"], 1),   # in-process modes share one copy
    (MULTI_PROCESS, 2),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=0"], os.cpu_count()),
    (["--runner=DataflowRunner", "--direct_num_workers=8"], None),
])
def test_local_workers_counts_the_processes_that_load_the_model(args, workers):
    assert parity_beam.local_workers(args) == workers


def test_step_refuses_parity_workers_the_machine_cannot_hold_before_writing(
        assets, tmp_path, monkeypatch):
    model = keras.saving.load_model(assets["model"])
    weights = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    # Enough for the check's one copy, not for two workers of two copies each.
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 * weights)
    outcome_dir = tmp_path / "out"
    with pytest.raises(InputError) as info:
        step.run(step.ExportStep(
            model=assets["model"], config={**CONFIG, "check": {"enabled": True}},
            output_dir=str(outcome_dir), transform_graph_path=assets["transform_graph"],
            example_files=assets["files"], beam_pipeline_args=MULTI_PROCESS))
    assert info.value.where == "beam_pipeline_args"
    assert info.value.received == "--direct_num_workers=2"
    assert "--direct_num_workers=1" in info.value.fix
    assert os.listdir(tmp_path) == []
