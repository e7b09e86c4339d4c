"""Runs TFX's own example Trainer modules through a real pipeline and exports them.

    PYTHONPATH=tests python -m zoo.tfx_trainer_runner --root DIR --out results.json ID...

One process for every module: TFX 1.16's Keras examples build `tf.keras` models
that need Keras 2 (`TF_USE_LEGACY_KERAS=1`, read when TensorFlow is first
imported), while the pytest process keeps Keras 3; and importing TFX costs up
to 50 s, paid once here.

Per module: ExampleGen -> StatisticsGen -> SchemaGen -> Transform(module's
preprocessing_fn) -> Trainer(module's run_fn, a few steps) -> ModelExporter
(one `kind: tf_example` + `transform` endpoint) under LocalDagRunner with an
SQLite ML Metadata store. Then the same Trainer output is exported again
through the CLI, and both exports are compared with the Trainer's own
hand-written `serving_default` over every record of the eval split, at two
batch sizes. The results (one JSON object per module) go to --out; the
assertions are the pytest harness's job (test_tfx_trainers.py).

The BERT modules (`tiny_hub` in the table) load BERT from tfhub.dev: each runs
as a copy of its own file in which only `_BERT_LINK` (set to a tiny local module
in the same format, tiny_bert_hub.py) and `_MAX_LEN` are replaced, on generated
CoLA-like (`sentence`, `label`) or MRPC-like (`sentence1`, `sentence2`, `label`)
data.
"""

import os

# Must precede the first TensorFlow import: it decides what tf.keras is.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Transform and Trainer import the module from its file, as the main job does
# (local_runner passes module paths): without this, TFX builds a wheel of each
# module_file when the pipeline compiles and pip-installs it before each of the two
# components runs, subprocesses that cost several seconds apiece and are no part of
# what the zoo compares.
os.environ["UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

import numpy as np  # noqa: E402

from zoo import tfx_trainers  # noqa: E402

# Small data: a few hundred rows at most, so the whole zoo stays in its budget.
MNIST_ROWS = 120
MNIST_PIXELS = 784


# How each dataset enters the pipeline: CSV files, or TFRecords of tf.Examples.
EXAMPLE_GEN = {"penguin": "csv", "imdb": "csv", "mnist": "import", "cola": "csv",
               "mrpc": "csv"}
GLUE_ROWS = 48


def prepare_data(module: tfx_trainers.TrainerModule, data_root: str) -> str:
    """Writes the module's input data under data_root (once per dataset); returns
    the ExampleGen kind."""
    kind = EXAMPLE_GEN[module.data]
    if os.path.isdir(data_root):
        return kind
    os.makedirs(data_root)
    if module.data == "penguin":
        # Same columns as TFX's penguin data (plus `island`, which these modules ignore).
        shutil.copy(tfx_trainers.PENGUIN_CSV, data_root)
    elif module.data == "imdb":
        shutil.copy(os.path.join(tfx_trainers.examples_dir(), "imdb", "data",
                                 "imdb_small_with_labels.txt"),
                    os.path.join(data_root, "imdb_small_with_labels.csv"))
    elif module.data in ("cola", "mrpc"):
        write_glue_csv(module.data, os.path.join(data_root, f"{module.data}.csv"))
    else:
        write_mnist_records(os.path.join(data_root, "mnist.tfrecord"))
    return kind


def glue_sentence(rng) -> str:
    """A sentence of the tiny vocabulary's words (with a word now and then that it
    lacks, tokenized as [UNK], and one that WordPiece splits), no commas."""
    from zoo import tiny_bert_hub
    words = [w for w in tiny_bert_hub.WORDS if w.isalpha()]
    chosen = list(rng.choice(words, size=int(rng.integers(3, 9))))
    if rng.random() < 0.3:
        chosen.append("zebra")        # not in the vocabulary: [UNK]
    if rng.random() < 0.3:
        chosen.append("walking")      # walk ##ing
    sentence = " ".join(chosen)
    return sentence[0].upper() + sentence[1:] + rng.choice([".", "?", ""])


def write_glue_csv(task: str, path: str, rows: int = GLUE_ROWS, seed: int = 0) -> None:
    """CoLA's columns (`sentence`, int `label`) or MRPC's (`sentence1`,
    `sentence2`, int `label`), as bert_cola_utils / bert_mrpc_utils read them."""
    import csv
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        if task == "cola":
            out.writerow(["sentence", "label"])
            for i in range(rows):
                out.writerow([glue_sentence(rng), i % 2])
        else:
            out.writerow(["sentence1", "sentence2", "label"])
            for i in range(rows):
                first = glue_sentence(rng)
                second = first if i % 2 else glue_sentence(rng)
                out.writerow([first, second, i % 2])


def replace_constant(text: str, name: str, value: str) -> str:
    """`NAME = ...` replaced by `NAME = value`; the line must occur exactly once."""
    pattern = re.compile(rf"^{name} = .*$", re.M)
    found = pattern.findall(text)
    assert len(found) == 1, (name, found)
    return pattern.sub(lambda _: f"{name} = {value}", text)


def tiny_hub_module_file(module: tfx_trainers.TrainerModule, root: str) -> str:
    """A copy of the module in which only `_BERT_LINK` (the tiny local module,
    built once under root) and `_MAX_LEN` differ from the wheel's file."""
    from zoo import tiny_bert_hub
    hub_dir = os.path.join(root, "tiny_bert_hub")
    if not os.path.isdir(hub_dir):
        tiny_bert_hub.build(hub_dir)
    with open(tfx_trainers.module_file(module), encoding="utf-8") as f:
        text = f.read()
    assert f"_BERT_LINK = '{module.downloads}'" in text, module.path
    text = replace_constant(text, "_BERT_LINK", repr(os.path.abspath(hub_dir)))
    text = replace_constant(text, "_MAX_LEN", str(tfx_trainers.TINY_BERT_MAX_LEN))
    copy_dir = os.path.join(root, module.id, "module")
    os.makedirs(copy_dir, exist_ok=True)
    path = os.path.join(copy_dir, os.path.basename(module.path))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_mnist_records(path: str, rows: int = MNIST_ROWS, seed: int = 0) -> None:
    """What mnist_utils_native_keras_base reads: `image_floats`, 784 floats in
    [-0.5, 0.5] (a flattened 28x28 image), and an int64 `image_class` in 0..9.

    Each class is a noisy copy of its own random template, so a few steps of
    training move the outputs away from the initial ones.
    """
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    templates = rng.uniform(-0.5, 0.5, size=(10, MNIST_PIXELS))
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(rows):
            label = i % 10
            image = np.clip(templates[label] + rng.normal(0, 0.1, MNIST_PIXELS), -0.5, 0.5)
            example = tf.train.Example(features=tf.train.Features(feature={
                "image_floats": tf.train.Feature(
                    float_list=tf.train.FloatList(value=image.astype(np.float32))),
                "image_class": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }))
            writer.write(example.SerializeToString())


def same_preprocessing_fn(a: tfx_trainers.TrainerModule,
                          b: tfx_trainers.TrainerModule) -> bool:
    import importlib
    def load(m):
        return importlib.import_module("tfx.examples." + m.path[:-3].replace("/", "."))
    return load(a).preprocessing_fn is load(b).preprocessing_fn


def build_pipeline(module: tfx_trainers.TrainerModule, root: str, data_root: str,
                   example_gen_kind: str):
    from tfx import v1 as tfx
    from export_archive.components.tfx.component import ModelExporter

    module_file = (tiny_hub_module_file(module, root) if module.tiny_hub
                   else tfx_trainers.module_file(module))
    transform_module_file = module_file
    if module.transform_of:
        shared = tfx_trainers.BY_ID[module.transform_of]
        assert same_preprocessing_fn(module, shared), (module.id, shared.id)
        transform_module_file = tfx_trainers.module_file(shared)
    if example_gen_kind == "csv":
        example_gen = tfx.components.CsvExampleGen(input_base=data_root)
    else:
        example_gen = tfx.components.ImportExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=True)
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"],
                                         schema=schema_gen.outputs["schema"],
                                         module_file=transform_module_file)
    trainer = tfx.components.Trainer(
        module_file=module_file,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=tfx_trainers.TRAIN_STEPS),
        eval_args=tfx.proto.EvalArgs(num_steps=tfx_trainers.EVAL_STEPS))
    exporter = ModelExporter(
        model=trainer.outputs["model"],
        schema=schema_gen.outputs["schema"],
        transform_graph=transform.outputs["transform_graph"],
        examples=example_gen.outputs["examples"],
        export_config=module.export_config)
    # One pipeline name (and store) per dataset, with the cache on: the modules that
    # read the same data get ExampleGen, StatisticsGen and SchemaGen from the cache,
    # while each Transform and Trainer runs, since its module_file differs.
    return tfx.dsl.Pipeline(
        pipeline_name=f"zoo-{module.data}",
        pipeline_root=os.path.join(root, "pipeline"),
        components=[example_gen, statistics_gen, schema_gen, transform, trainer, exporter],
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=["--direct_num_workers=1"])


def read_outputs(metadata_path: str) -> Dict[str, Any]:
    """The artifacts and executions the run recorded in ML Metadata, by component."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)
    out: Dict[str, Any] = {"artifacts": {}, "executions": {}}
    types = {t.id: t.name for t in store.get_execution_types()}
    # In id order, so the latest run's executions (cached ones included: they are
    # recorded with the outputs they reuse) win.
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        component = types[execution.type_id].split(".")[-1]
        out["executions"][component] = execution
        for event in store.get_events_by_execution_ids([execution.id]):
            if event.type != metadata_store_pb2.Event.OUTPUT:
                continue
            key = event.path.steps[0].key
            [artifact] = store.get_artifacts_by_id([event.artifact_id])
            out["artifacts"][(component, key)] = artifact
    return out


def eval_records(examples_uri: str) -> List[bytes]:
    import tensorflow as tf
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def sole_output(outputs: Dict[str, Any]) -> np.ndarray:
    """The one output of a signature: ours and the Trainer's name it differently
    (`output_0` vs the module's own key), the values must agree."""
    if len(outputs) != 1:
        raise AssertionError(f"expected one output, got {sorted(outputs)}")
    return next(iter(outputs.values())).numpy()


def serve_split(fn, records: List[bytes], batch: int) -> np.ndarray:
    import tensorflow as tf
    batch = batch or len(records)
    return np.concatenate([sole_output(fn(examples=tf.constant(records[i:i + batch])))
                           for i in range(0, len(records), batch)])


def in_memory_outputs(trainer_dir: str, records: List[bytes], label: str,
                      transform_uri: str) -> np.ndarray:
    """The Trainer's model called in Python on the transformed eval split: the
    hand-written pattern (parse -> tft_layer -> model) without its signature.

    The modules save with `tf.saved_model.save`, which writes no Keras metadata, so
    the model comes back as the restored object: its `__call__` accepts only the
    input structure Keras traced (penguin: a list of named inputs; imdb: a dict),
    which the transformed features are arranged into.
    """
    import tensorflow as tf
    import tensorflow_transform as tft
    tft_output = tft.TFTransformOutput(transform_uri)
    spec = tft_output.raw_feature_spec()
    spec.pop(label)
    model = tf.saved_model.load(trainer_dir)
    layer = tft_output.transform_features_layer()
    features = layer(tf.io.parse_example(tf.constant(records), spec))
    structure = model.__call__.concrete_functions[0].structured_input_signature[0][0]
    if isinstance(structure, dict):
        inputs = {key: features[key] for key in structure}
    else:
        inputs = tf.nest.map_structure(lambda s: features[s.name], structure)
    outputs = model(inputs, training=False)
    if isinstance(outputs, dict):
        return sole_output(outputs)
    return outputs.numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"output shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def cli_export(trainer_uri: str, schema_uri: str, transform_uri: str,
               config: Dict[str, Any], output: str) -> Dict[str, Any]:
    """`export-archive export` in this process (TensorFlow is already loaded)."""
    from export_archive import cli
    config_path = output + ".json"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["export", "--model", trainer_uri, "--schema", schema_uri,
                         "--transform-graph", transform_uri, "--config", config_path,
                         "--output", output, "--overwrite", "--no-check", "--json"])
    if code != 0:
        raise RuntimeError(f"export-archive export exited {code}: {stderr.getvalue()}")
    return json.loads(stdout.getvalue())


def run_module(module: tfx_trainers.TrainerModule, root: str) -> Dict[str, Any]:
    import tensorflow as tf
    from tfx import v1 as tfx
    from tfx.utils import path_utils
    from export_archive import writer
    from export_archive.components.tfx import spec

    if module.tiny_hub:
        from zoo import tiny_bert_hub
        tiny_bert_hub.import_tensorflow_hub()
    group_root = os.path.join(root, module.data)
    data_root = os.path.join(group_root, "data")
    kind = prepare_data(module, data_root)
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(build_pipeline(module, group_root, data_root, kind))
    pipeline_seconds = time.time() - started

    recorded = read_outputs(os.path.join(group_root, "metadata.sqlite"))
    artifacts = recorded["artifacts"]
    example_gen = "CsvExampleGen" if kind == "csv" else "ImportExampleGen"
    examples_uri = artifacts[(example_gen, "examples")].uri
    schema_uri = artifacts[("SchemaGen", "schema")].uri
    transform_uri = artifacts[("Transform", "transform_graph")].uri
    trainer_uri = artifacts[("Trainer", "model")].uri
    ours_artifact = artifacts[("ModelExporter", spec.MODEL_KEY)]
    report_uri = artifacts[("ModelExporter", spec.REPORT_KEY)].uri
    execution = recorded["executions"]["ModelExporter"]
    exporter_seconds = (execution.last_update_time_since_epoch
                        - execution.create_time_since_epoch) / 1000.0

    trainer_dir = path_utils.serving_model_path(trainer_uri)
    ours_dir = path_utils.serving_model_dir(ours_artifact.uri)
    properties = {k: v.string_value for k, v in ours_artifact.custom_properties.items()}
    with open(os.path.join(report_uri, spec.REPORT_JSON), encoding="utf-8") as f:
        report = json.load(f)

    cli_dir = os.path.join(root, module.id, "cli_export")
    os.makedirs(os.path.dirname(cli_dir), exist_ok=True)
    started = time.time()
    cli_result = cli_export(trainer_uri, schema_uri, transform_uri, module.export_config,
                            cli_dir)
    cli_seconds = time.time() - started

    records = eval_records(examples_uri)
    reference = tf.saved_model.load(trainer_dir).signatures["serving_default"]
    ours_model = tf.saved_model.load(ours_dir)
    ours = ours_model.signatures["serving_default"]
    cli_model = tf.saved_model.load(cli_dir).signatures["serving_default"]
    diffs: Dict[str, float] = {}
    shapes = {}
    for batch in tfx_trainers.BATCH_SIZES:
        expected = serve_split(reference, records, batch)
        got = serve_split(ours, records, batch)
        from_cli = serve_split(cli_model, records, batch)
        shapes[str(batch)] = [list(expected.shape), list(got.shape), list(from_cli.shape)]
        diffs[f"ours_vs_trainer_batch{batch}"] = max_abs_diff(got, expected)
        diffs[f"cli_vs_trainer_batch{batch}"] = max_abs_diff(from_cli, expected)
        diffs[f"cli_vs_exporter_batch{batch}"] = max_abs_diff(from_cli, got)
    # Equal outputs only mean something if they vary from record to record.
    spread = float(np.std(expected, axis=0).max())
    memory = in_memory_outputs(trainer_dir, records, module.label, transform_uri)
    diffs["ours_vs_in_memory"] = max_abs_diff(serve_split(ours, records, 0), memory)

    return {
        "id": module.id, "status": "ran", "records": len(records), "diffs": diffs,
        "shapes": shapes, "output_spread": spread,
        "ours_signatures": sorted(ours_model.signatures.keys()),
        "cli_endpoints": [e["name"] for e in cli_result.get("endpoints", [])],
        "serving_check": properties.get(spec.SERVING_CHECK_PROPERTY),
        "exported_endpoints": json.loads(properties.get(spec.ENDPOINTS_PROPERTY, "[]")),
        "report_checks": report.get("checks", []),
        "sizes": {"ours": writer.directory_size(ours_dir),
                  "cli": writer.directory_size(cli_dir),
                  "trainer": writer.directory_size(trainer_dir)},
        "seconds": {"pipeline": pipeline_seconds, "exporter": exporter_seconds,
                    "cli": cli_seconds},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("modules", nargs="+", choices=sorted(tfx_trainers.BY_ID))
    args = parser.parse_args(argv)
    results = {}
    for module_id in args.modules:
        module = tfx_trainers.BY_ID[module_id]
        try:
            results[module_id] = run_module(module, args.root)
        except Exception as e:  # one module's failure must not hide the others' results
            results[module_id] = {"id": module_id, "status": "error",
                                  "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc()[-6000:]}
        # Written after every module, so a timeout still leaves the finished ones.
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    exit_code = main()
    # The results are on disk (written after every module): skip interpreter
    # finalization. After the BERT modules it segfaults in protobuf's C++
    # `_message` dealloc while clearing module globals (the ImportErrors that
    # google.cloud.aiplatform_v1*.services.*.client keep as ASYNC_REST_EXCEPTION,
    # whose tracebacks hold protobuf objects): exit code -11 with every result
    # written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
