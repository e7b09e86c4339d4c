"""Running the main job the way a user does, and checking the model it pushed.

Shared by tests/e2e/test_local_pipeline.py (Keras 3, a first and a cached run) and
tests/e2e/test_local_pipeline_keras2.py (the Keras 2 Trainer, in its own process
because TF_USE_LEGACY_KERAS must be set before TensorFlow loads).
"""

import glob
import json
import os
import re
import sys

import numpy as np
import tensorflow as tf

from export_archive import cli, describe, rest
from helpers import background
from helpers.outputs import single

LABEL = "species"
ENDPOINTS = ["serve_raw", "serving_default"]
# A component line: two spaces, the node id, its state, and (at the end) its time.
COMPONENT_LINE = re.compile(r"^  (\S+) +(running|done|cached|skipped|FAILED)(?: +(\S+))?$")


def start_main_job(root, *args) -> background.Job:
    """`python -m export_archive.pipelines.local_runner --root ROOT ARGS`, started;
    `job.root` is ROOT."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    job = background.Job(
        [sys.executable, "-m", "export_archive.pipelines.local_runner", "--root", str(root),
         *args], os.path.join(str(root), "_job"), env=env, name="main_job")
    job.root = str(root)
    return job


def main_job_result(job: background.Job, timeout=1500):
    """The job's stdout/stderr once it has ended, which it must with exit code 0."""
    proc = job.wait(timeout)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    return proc


def new_main_job(tmp_path_factory, name, args):
    """A starter for background.submit/take: the main job with ARGS in a new root."""
    return lambda: start_main_job(tmp_path_factory.mktemp(name), *args)


def summary_value(stdout, label):
    """The text after `label: ` on the summary line starting with it."""
    values = [line[len(label) + 2:] for line in stdout.splitlines()
              if line.startswith(label + ": ")]
    assert len(values) == 1, f"expected one {label!r} line in:\n{stdout}"
    return values[0]


def component_lines(stdout):
    """[(node id, state)] of the component lines, in order."""
    return [m.group(1, 2) for m in map(COMPONENT_LINE.match, stdout.splitlines()) if m]


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


def check_pushed_model(pushed, root, name, trainer_predict):
    """The pushed model answers like the Trainer's own, over gRPC-style tf.Examples and
    REST JSON alike, and `export-archive check` passes on it."""
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
