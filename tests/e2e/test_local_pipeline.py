"""The main job end to end: the local pipeline under LocalDagRunner with SQLite MLMD.

Asserts what a user relies on: the pushed model loads, every endpoint answers,
the tf.Example `serving_default` matches the Trainer's own model on the same
examples, and a second run is served from the TFX cache.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from export_archive import cli, describe, rest
from helpers.outputs import single

pytestmark = pytest.mark.e2e

LABEL = "species"
ENDPOINTS = ["serve_raw", "serving_default"]


def artifact_dir(root, name, component, key):
    paths = sorted(glob.glob(os.path.join(root, name, "pipeline", component, key, "*")),
                   key=lambda p: int(os.path.basename(p)))
    assert paths, f"no {component}.{key} artifact under {root}"
    return paths[-1]


def eval_examples(root, name, count=16):
    split = os.path.join(artifact_dir(root, name, "CsvExampleGen", "examples"), "Split-eval")
    files = tf.io.gfile.glob(os.path.join(split, "*"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [r.numpy() for r in records]


def transformed(root, name, serialized):
    import tensorflow_transform as tft
    tft_output = tft.TFTransformOutput(artifact_dir(root, name, "Transform", "transform_graph"))
    spec = tft_output.raw_feature_spec()
    spec.pop(LABEL)
    raw = tf.io.parse_example(tf.constant(serialized), spec)
    features = tft_output.transform_features_layer()(raw)
    return {k: v for k, v in features.items() if k != LABEL}


def check_pushed_model(pushed, root, name, trainer_predict):
    assert sorted(s.name for s in describe.describe(pushed)) == ENDPOINTS
    assert os.listdir(os.path.join(pushed, "assets")) == ["island_vocab"]
    revived = tf.saved_model.load(pushed)
    serialized = eval_examples(root, name)
    features = transformed(root, name, serialized)
    for batch in (len(serialized), 3):
        examples = tf.constant(serialized[:batch])
        served = single(revived.signatures["serving_default"](examples=examples)).numpy()
        batch_features = {k: v[:batch] for k, v in features.items()}
        expected = trainer_predict(batch_features)
        assert served.shape == (batch, 3)
        np.testing.assert_allclose(served, expected, atol=1e-4)
        # A REST client's JSON for the same animals gets the same answer.
        body = rest.instances_from_features(raw_rows(serialized[:batch]))
        tensors = rest.request_to_tensors(json.loads(json.dumps(body)),
                                          describe.signature_def(pushed, "serve_raw"))
        raw = single(revived.signatures["serve_raw"](**{k: tf.constant(v) for k, v in
                                                  tensors.items()})).numpy()
        np.testing.assert_allclose(raw, served, rtol=1e-6, atol=1e-6)
    # Not part of a serving export any more: no training endpoint, no optimizer state.
    assert not hasattr(revived, "optimizer_variables")
    # `export-archive check` on the pushed model, with no other flag, passes: it
    # replays the model's own warmup requests.
    assert cli.main(["check", pushed]) == 0


def raw_rows(serialized):
    """Each record's raw features (no label), as a REST client holds them."""
    rows = []
    for record in serialized:
        feature = tf.train.Example.FromString(record).features.feature
        row = {}
        for key, value in feature.items():
            if key == LABEL:
                continue
            kind = value.WhichOneof("kind")
            row[key] = list(getattr(value, kind).value)[0]
        rows.append(row)
    return rows



def executions_by_state(metadata_path):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)
    states = {}
    for execution in store.get_executions():
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        states[state] = states.get(state, 0) + 1
    return states


def test_keras3_pipeline_pushes_a_served_model_and_caches(tmp_path):
    from export_archive.pipelines import local_runner
    root, name = str(tmp_path), "export-archive-penguin-keras3"
    # Without the contract baseline: a second identical run is then entirely cached
    # (with it, ModelExporter re-runs against the new push; test_contract_pipeline).
    pushed = local_runner.run("3", root, train_steps=30, contract_baseline=False)

    import keras
    trainer_dir = artifact_dir(root, name, "Trainer", "model")
    trainer_model = keras.saving.load_model(
        os.path.join(trainer_dir, "Format-Serving", "model.keras"))
    check_pushed_model(pushed, root, name,
                       lambda f: np.asarray(trainer_model(f, training=False)))

    metadata = os.path.join(root, name, "metadata.sqlite")
    first = executions_by_state(metadata)
    assert first.get("COMPLETE") == 7 and "CACHED" not in first
    again = local_runner.run("3", root, train_steps=30, contract_baseline=False)
    assert again == pushed
    second = executions_by_state(metadata)
    assert second.get("CACHED") == 7, second
    assert second.get("COMPLETE") == 7


def test_keras2_pipeline_in_its_own_process(tmp_path):
    """TF_USE_LEGACY_KERAS must be set before TensorFlow loads: run the CLI."""
    proc = subprocess.run(
        [sys.executable, "-m", "export_archive.pipelines.local_runner", "--keras", "2",
         "--root", str(tmp_path), "--train-steps", "30"],
        capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pushed model:" in proc.stdout and "signature 'serving_default'" in proc.stdout
    root, name = str(tmp_path), "export-archive-penguin-keras2"
    pushed = proc.stdout.split("Pushed model: ")[1].split("\n")[0].strip()

    # The Trainer saved with tf.saved_model.save (no Keras metadata): compare with its
    # restored call function, the way TF would serve the Trainer's own model.
    trainer = tf.saved_model.load(
        os.path.join(artifact_dir(root, name, "Trainer", "model"), "Format-Serving"))
    check_pushed_model(pushed, root, name,
                       lambda f: trainer(f, training=False).numpy())
