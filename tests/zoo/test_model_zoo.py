"""The model zoo: Keras / TF models nobody here wrote, through one harness.

For every entry of `zoo/models.py`: save the model as a Trainer would leave it,
export it through the CLI (in process) and through ModelExporter's real
executor over real artifact directories (which runs the serving check, once per
entry), reload both exports, and compare every endpoint at two batch sizes with
the in-memory model, with the stock export (`model.export()`, a hand-written
tf_keras ExportArchive, or `tf.saved_model.save`), and with each other. Sizes
are compared with the stock export. With ZOO_RESULTS set, each entry records
one row for docs/zoo.md (`scripts/zoo_report.py`).
"""

import importlib.util
import json
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_archive import cli
from export_archive.describe import describe
from export_archive.writer import directory_size
from zoo import models
from zoo.rows import record_row

# The current lane has no TFX: there the zoo runs through the CLI alone, with the
# serving check on, instead of through ModelExporter's executor and the CLI.
HAVE_TFX = importlib.util.find_spec("tfx") is not None

pytestmark = pytest.mark.integration

BATCHES = (5, 1)
ATOL = 1e-5
# float16 has a 10-bit mantissa: one ulp is 2**-10 (~1e-3) at magnitude 1. The
# same float16 computation run eagerly and as a SavedModel may round an
# intermediate differently (graph-mode fusion), so float16 outputs, and the
# outputs of a model computing in float16 (Entry.float16: mixed precision, even
# its float32 head), are compared to a few float16 ulps. Everything else: 1e-5.
FLOAT16_TOL = 4e-3
SEED_STATE = np.array([7, 0])


def as_dict(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return {f"output_{i}": np.asarray(v) for i, v in enumerate(tf.nest.flatten(outputs))}


def keyed_like(outputs, ours, model):
    """The in-memory or stock answer, keyed as our export keys its outputs: by the
    model's output names when ours uses them (a served output then says what it
    is), else `output_0`, ... like a SavedModel signature."""
    if isinstance(outputs, dict):
        return as_dict(outputs)
    flat = tf.nest.flatten(outputs)
    names = list(getattr(model, "output_names", None) or [])
    if sorted(ours) == sorted(names) and len(names) == len(flat):
        return {n: np.asarray(v) for n, v in zip(names, flat)}
    return as_dict(outputs)


def max_abs_diff(got, want):
    return max(float(np.max(np.abs(got[k].astype("float64") - want[k].astype("float64")),
                        initial=0.0)) for k in want)


def assert_close(got, want, what, float16=False):
    assert sorted(got) == sorted(want), f"{what}: output keys {sorted(got)} != {sorted(want)}"
    for key in want:
        assert got[key].dtype == want[key].dtype, f"{what}[{key}]: dtype"
        assert got[key].shape == want[key].shape, f"{what}[{key}]: shape"
        tol = FLOAT16_TOL if float16 or want[key].dtype == np.float16 else ATOL
        np.testing.assert_allclose(got[key].astype("float64"), want[key].astype("float64"),
                                   rtol=tol, atol=tol, err_msg=f"{what}[{key}]")


def reset_dropout_seeds(*objects):
    """Sets every Dropout seed state to one value, so training-mode (dropout) calls of
    the in-memory model and of the reloaded exports draw the same mask."""
    for obj in objects:
        seeds = [v for v in obj.variables if "seed_generator_state" in v.name]
        assert seeds, f"no Dropout seed state found in {obj}"
        for v in seeds:
            v.assign(SEED_STATE.astype(tf.as_dtype(v.dtype).as_numpy_dtype))


def export_with_cli(trained_uri, config, output, check=False):
    """`export-archive export`, in process. With TFX the serving check runs once per
    entry, in ModelExporter, and this export must answer exactly as that one does;
    without TFX, this export runs the check."""
    code = cli.main(["export", "--model", str(trained_uri), "--config", json.dumps(config),
                     "--output", str(output), "--check" if check else "--no-check"])
    assert code == 0, f"export-archive export exited {code}"


class CliRun:
    """The stand-in for `helpers.tfx_run.Run` where TFX is missing: the Trainer's
    artifact directory, exported through the CLI with the check on."""

    def __init__(self, tmp_path):
        self.trained_uri = str(tmp_path / "Trainer" / "model" / "1")
        self.trainer_serving_dir = os.path.join(self.trained_uri, "Format-Serving")
        self.serving_dir = str(tmp_path / "checked")

    def do(self, config):
        export_with_cli(self.trained_uri, config, self.serving_dir, check=True)
        # exit 0 with --check: the check passed (a failing one exits 3). The names
        # are the signatures written, in config order where written.
        written = {s.name for s in describe(self.serving_dir)}
        return "passed", [e["name"] for e in config["endpoints"] if e["name"] in written]


class ExecutorRun:
    """ModelExporter's real executor over real artifact directories."""

    def __init__(self, tmp_path):
        from helpers.tfx_run import Run
        self.run = Run(tmp_path)
        self.trained_uri = self.run.trained.uri
        self.trainer_serving_dir = self.run.trainer_serving_dir
        self.serving_dir = self.run.serving_dir

    def do(self, config):
        from export_archive.components.tfx import spec
        self.run.do(config)
        model = self.run.model
        return (model.get_string_custom_property(spec.SERVING_CHECK_PROPERTY),
                json.loads(model.get_string_custom_property(spec.ENDPOINTS_PROPERTY)))


@pytest.fixture(autouse=True)
def same_random_init():
    keras.utils.set_random_seed(0)


@pytest.mark.parametrize("entry", models.ENTRIES, ids=lambda e: e.id)
def test_zoo_entry(entry, tmp_path):
    model = entry.build()
    run = ExecutorRun(tmp_path) if HAVE_TFX else CliRun(tmp_path)
    models.save_source(entry, model, run.trainer_serving_dir)
    reference_dir = str(tmp_path / "reference")
    models.export_reference(entry, model, reference_dir)
    names = [e["name"] for e in entry.endpoints]

    start = time.perf_counter()
    export_with_cli(run.trained_uri, entry.config, tmp_path / "cli")
    check, written = run.do(entry.config)     # the serving check runs here
    seconds = time.perf_counter() - start

    assert check == "passed"
    assert written == names
    for exported in (run.serving_dir, tmp_path / "cli"):
        assert {s.name for s in describe(str(exported))} == set(names) | {"serving_default"}

    ours = tf.saved_model.load(run.serving_dir)
    from_cli = tf.saved_model.load(str(tmp_path / "cli"))
    reference = tf.saved_model.load(reference_dir)
    worst, records, compared_with_memory_only = 0.0, 0, []
    for endpoint in entry.endpoints:
        name = endpoint["name"]
        call = models.endpoint_call(entry, endpoint)
        expected = models.in_memory_call(entry, endpoint)
        stock = models.reference_call(entry, endpoint)
        seeded = name in entry.seeded
        for batch in BATCHES:
            x = entry.sample(batch, batch)
            answers = {}
            for label, fn, obj in (("ModelExporter", call, ours), ("CLI", call, from_cli),
                                   ("in-memory model", expected, model)):
                if seeded:
                    reset_dropout_seeds(obj)
                answers[label] = fn(obj, x)
            got, cli_got = as_dict(answers["ModelExporter"]), as_dict(answers["CLI"])
            answers["in-memory model"] = keyed_like(answers["in-memory model"], got, model)
            what = f"{entry.id}.{name} batch {batch}"
            assert_close(got, answers["in-memory model"], f"{what} vs in-memory model",
                         entry.float16)
            for key in got:
                np.testing.assert_array_equal(cli_got[key], got[key],
                                              err_msg=f"{what}: CLI vs ModelExporter")
            if seeded:
                # The mask is really drawn: training mode differs from inference.
                inference = keyed_like(model(x, training=False), got, model)
                assert any(not np.array_equal(got[k], inference[k]) for k in got), what
            if stock is None:
                compared_with_memory_only.append(name)
                worst = max(worst, max_abs_diff(got, answers["in-memory model"]))
            else:
                want = keyed_like(stock(reference, x), got, model)
                assert_close(got, want, f"{what} vs {entry.reference}", entry.float16)
                worst = max(worst, max_abs_diff(got, want))
            records += batch

    # Like with like: the CLI export has no warmup file, as the stock export has none.
    size_ratio = directory_size(str(tmp_path / "cli")) / directory_size(reference_dir)
    note = entry.note
    if compared_with_memory_only:
        note += (f"; {', '.join(sorted(set(compared_with_memory_only)))} compared with the "
                 f"in-memory model ({entry.reference} has no such endpoint)")
    record_row(group=entry.group, model=entry.id, endpoints=names, reference=entry.reference,
               max_abs_diff=worst, records=records, size_ratio=round(size_ratio, 3),
               check=check, seconds=round(seconds, 1), status="pass", note=note)


# ---- stock limits: TF/Keras fail the same way; our error must say it more clearly


def test_stock_limit_subclassed_model_loaded_without_signature(tmp_path, capsys):
    """A subclassed Keras 3 model loaded from .keras has no recorded inputs: stock
    `model.export()` refuses it, and so must we, naming the field and the fix."""
    entry = models.entry("subclassed_mc_dropout")
    path = str(tmp_path / "model.keras")
    entry.build().save(path)
    loaded = keras.saving.load_model(path)
    with pytest.raises(ValueError, match="never called") as stock:
        loaded.export(str(tmp_path / "stock"), verbose=False)

    start = time.perf_counter()
    config = {"endpoints": [{"name": "serve"}], "import_modules": ["zoo.models"]}
    code = cli.main(["export", "--model", path, "--config", json.dumps(config),
                     "--output", str(tmp_path / "ours")])
    seconds = time.perf_counter() - start
    message = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert "`endpoints[0].input_signature`" in message
    assert "subclassed model" in message and path in message
    assert 'e.g. ["float32[?,3]"]' in message   # its build shapes, as a config leaf
    record_row(group=models.KERAS3, model="subclassed_loaded_inferred_signature",
               endpoints=["serve"], reference=models.MODEL_EXPORT, max_abs_diff=None,
               records=0, size_ratio=None, check="not run: export refused",
               seconds=round(seconds, 1), status="stock limit",
               note="stock: " + str(stock.value).splitlines()[0] + " | ours: " +
                    message.strip().splitlines()[-1][len("export-archive: error: "):]
                    .replace(path, "model.keras"))   # no tmp path in docs/zoo.md
