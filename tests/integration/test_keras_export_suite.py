"""Our ExportArchive subclasses keep the public API of the stock ExportArchive.

Two parts:

* **Keras's own test suite.** The keras wheel ships the tests of its
  ExportArchive (`keras/src/export/saved_model_test.py`). We run that file in two
  pytest subprocesses at once, one with the stock class and one with our
  `Keras3ExportArchive` rebound in its place (`tests/keras_suite/plugin.py`),
  and require every test that passes with stock to pass with ours. The whole
  file runs, nothing is deselected: about 50 s per variant on an idle machine,
  the two variants in parallel. The tf_keras 2.16 wheel ships no test of its
  `export_lib` (no `tf_keras/src/export/export_lib_test.py`), so its variant is
  reported as skipped; it runs the same way if a later wheel ships one.
* **What that suite does not check**: the `write_out` signature and printed
  summary, unknown keywords, `add_variable_collection`'s container errors, and
  clear errors for our own `serving_default` / `method_names` extras. Each is
  compared with what the stock class does on the same input, for both flavors.
"""

import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export_archive import archive
from helpers import models
from helpers.models import IN_DIM, OUT_DIM, sample

pytestmark = pytest.mark.integration

FLAVORS = ["keras3", "tf_keras"]
SPEC = tf.TensorSpec(shape=(None, IN_DIM), dtype=tf.float32)
TESTS_DIR = Path(__file__).resolve().parents[1]

# flavor -> (module defining the stock ExportArchive, its test module in the wheel)
SUITES = {
    "keras3": ("keras.src.export.saved_model", "keras.src.export.saved_model_test"),
    "tf_keras": ("tf_keras.src.export.export_lib", "tf_keras.src.export.export_lib_test"),
}
VARIANTS = ("stock", "ours")
SUITE_TIMEOUT_S = 900


# ---- Keras's own suite, stock vs ours


def _run_suite(flavor, workdir):
    """Runs the wheel's ExportArchive tests once per variant, both at once."""
    stock_module, test_module = SUITES[flavor]
    spec = importlib.util.find_spec(test_module)
    if spec is None or not spec.origin:
        pytest.skip(f"the installed {flavor} wheel ships no {test_module} to run")
    # An ini of our own: the project's pytest.ini sits above .venv and would
    # otherwise apply to the wheel's test file.
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    procs = {}
    for variant in VARIANTS:
        env = dict(os.environ, KERAS_SUITE_VARIANT=variant, KERAS_SUITE_FLAVOR=flavor,
                   KERAS_SUITE_MODULE=stock_module,
                   KERAS_SUITE_RESULTS=str(workdir / f"{variant}.json"),
                   TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join(
                       p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p))
        # The Keras 3 suite needs Keras 3 behind tf.keras, as in our own tests; and
        # options meant for our run (e.g. `-m integration`) would deselect the
        # wheel's unmarked tests.
        for name in ("TF_USE_LEGACY_KERAS", "PYTEST_ADDOPTS"):
            env.pop(name, None)
        log = open(workdir / f"{variant}.log", "w")
        procs[variant] = (subprocess.Popen(
            [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(workdir),
             "-q", "-p", "keras_suite.plugin", spec.origin],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    runs = {}
    try:
        for variant, (proc, log) in procs.items():
            proc.wait(timeout=SUITE_TIMEOUT_S)
            log.close()
            results = workdir / f"{variant}.json"
            tail = (workdir / f"{variant}.log").read_text()[-3000:]
            # 0: all passed, 1: some failed. Anything else (usage error,
            # interrupted, crash) means the comparison would be meaningless.
            assert proc.returncode in (0, 1) and results.exists(), (
                f"{flavor} suite, {variant} variant: pytest exited with "
                f"{proc.returncode}; log tail:\n{tail}")
            runs[variant] = json.loads(results.read_text())
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return runs


@pytest.fixture(scope="module", params=FLAVORS)
def suite(request, tmp_path_factory):
    return request.param, _run_suite(request.param, tmp_path_factory.mktemp(request.param))


def _describe(nodeid, run):
    test = run["tests"].get(nodeid)
    if test is None:
        return f"{nodeid}: not run"
    return f"{nodeid}: {test['outcome']}\n{test['message']}".rstrip()


def test_suite_ran_the_same_tests_in_both_variants(suite):
    flavor, runs = suite
    stock, ours = runs["stock"]["tests"], runs["ours"]["tests"]
    counts = collections.Counter(t["outcome"] for t in stock.values())
    assert counts["passed"] > 0, f"no {flavor} test passed with the stock archive: {counts}"
    assert sorted(ours) == sorted(stock)


def test_suite_used_our_archive_wherever_stock_built_one(suite):
    flavor, runs = suite
    stock, ours = runs["stock"], runs["ours"]
    expected = archive.archive_class(flavor).__name__
    assert ours["class_at_end"] == expected
    assert SUITES[flavor][0] in ours["rebound"]
    built_in_stock = sorted(n for n, t in stock["tests"].items() if t["archives"])
    assert built_in_stock, "the stock run built no ExportArchive: is the plugin recording?"
    wrong = {n: ours["tests"][n]["archives"] for n in built_in_stock
             if ours["tests"][n]["archives"] != [expected]}
    assert not wrong, f"tests that did not build only {expected}: {wrong}"


def test_no_stock_test_regresses_with_our_archive(suite):
    flavor, runs = suite
    stock, ours = runs["stock"], runs["ours"]
    passed = {v: {n for n, t in runs[v]["tests"].items() if t["outcome"] == "passed"}
              for v in VARIANTS}
    differing = sorted(n for n in stock["tests"]
                       if stock["tests"][n]["outcome"] != ours["tests"].get(n, {}).get("outcome"))
    # Shown with -rA / -s; a difference that is not a regression (ours passes
    # where stock fails) is worth knowing about but does not fail the test.
    for nodeid in differing:
        print(f"{flavor}: outcome differs\n  stock: {_describe(nodeid, stock)}\n"
              f"  ours:  {_describe(nodeid, ours)}")
    regressed = sorted(passed["stock"] - passed["ours"])
    assert not regressed, (f"{len(regressed)} {flavor} test(s) pass with the stock archive "
                           "but not with ours:\n\n" +
                           "\n\n".join(_describe(n, ours) for n in regressed))


# ---- what the suite does not check


def _small_model(flavor):
    """`helpers.models.single_input`'s functional model, built but not trained:
    nothing here needs an optimizer, and a process's first tf_keras `fit` costs
    10-30 s on our CI machines."""
    keras = models.keras_module(flavor)
    x = inp = keras.Input((IN_DIM,), name="features")
    for layer in (keras.layers.Dense(8, activation="relu"),
                  keras.layers.BatchNormalization(), keras.layers.Dense(OUT_DIM)):
        x = layer(x)
    return keras.Model(inp, x)


@pytest.fixture(scope="module")
def small():
    """One small model per flavor, shared by the tests below."""
    cache = {}

    def get(flavor):
        if flavor not in cache:
            cache[flavor] = _small_model(flavor)
        return cache[flavor]
    return get


@pytest.fixture
def interactive_logging(flavor):
    """Keras prints the summary to stdout only with interactive logging on (the
    default); some other test may have turned it off, so turn it on here."""
    utils = (models.keras_module(flavor).config if flavor == "keras3"
             else models.keras_module(flavor).utils)
    was = utils.is_interactive_logging_enabled()
    utils.enable_interactive_logging()
    yield
    if not was:
        utils.disable_interactive_logging()


def stock_archive(flavor):
    return models.keras_module(flavor).export.ExportArchive()


def our_archive(flavor):
    return archive.archive_class(flavor)()


def filled(ea, model):
    """Two endpoints, so that which one `serving_default` aliases is observable.
    (Not a training-mode one: BatchNormalization would update its statistics on
    each call, in the model and in the reloaded copy, and the outputs drift.)"""
    ea.track(model)
    ea.add_endpoint(name="serve", fn=model.call, input_signature=[SPEC])
    ea.add_endpoint(name="doubled", fn=lambda x: 2.0 * model(x, training=False),
                    input_signature=[SPEC])
    return ea


def assert_round_trip(path, model):
    """Reload, compare every endpoint with the model, at two batch sizes; the
    first endpoint is the `serving_default` alias (the stock rule)."""
    revived = tf.saved_model.load(str(path))
    assert sorted(revived.signatures.keys()) == ["doubled", "serve", "serving_default"]
    for batch in (5, 2):
        x = sample(batch)
        expected = np.asarray(model(x, training=False))
        np.testing.assert_allclose(revived.serve(x), expected, atol=1e-5)
        np.testing.assert_allclose(revived.doubled(x), 2 * expected, atol=1e-5)
        default = list(revived.signatures["serving_default"](tf.constant(x)).values())[0]
        np.testing.assert_allclose(default, expected, atol=1e-5)


def normalised(text, *paths):
    """Printed summary with paths and object ids (captured handles) made neutral."""
    for path in paths:
        text = text.replace(str(path), "<path>")
    return re.sub(r"\b\d{6,}\b", "<id>", text)


@pytest.fixture(scope="module")
def stock_summaries(small, tmp_path_factory):
    """What each stock `write_out` prints by default (it prints for both flavors)."""
    cache = {}

    def get(flavor, capsys):
        if flavor not in cache:
            path = tmp_path_factory.mktemp(f"stock_{flavor}") / "m"
            capsys.readouterr()
            filled(stock_archive(flavor), small(flavor)).write_out(str(path))
            cache[flavor] = normalised(capsys.readouterr().out, path)
            assert "Saved artifact at '<path>'" in cache[flavor]
        return cache[flavor]
    return get


@pytest.mark.parametrize("flavor", FLAVORS)
def test_verbose_by_default_prints_the_stock_summary(
        flavor, small, stock_summaries, interactive_logging, capsys, tmp_path):
    expected = stock_summaries(flavor, capsys)
    filled(our_archive(flavor), small(flavor)).write_out(str(tmp_path / "m"))
    assert normalised(capsys.readouterr().out, tmp_path / "m") == expected
    assert_round_trip(tmp_path / "m", small(flavor))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_third_positional_argument_is_verbose(
        flavor, small, stock_summaries, interactive_logging, capsys, tmp_path):
    """`write_out(path, options, verbose)`, as in Keras 3 (tf_keras's stock method
    takes no `verbose`; ours accepts it for both flavors)."""
    expected = stock_summaries(flavor, capsys)
    model = small(flavor)
    filled(our_archive(flavor), model).write_out(str(tmp_path / "loud"), None, True)
    assert normalised(capsys.readouterr().out, tmp_path / "loud") == expected
    filled(our_archive(flavor), model).write_out(str(tmp_path / "quiet"), None, False)
    assert capsys.readouterr().out == ""
    # The positional flag did not become our `serving_default`: first endpoint aliased.
    assert_round_trip(tmp_path / "quiet", model)


def _single(model):
    return model.variables[0]


def _mapping(model):
    return {v.name: v for v in model.variables}


def _generator(model):
    return (v for v in model.variables)


@pytest.mark.parametrize("make", [_single, _mapping, _generator],
                         ids=["single_variable", "dict", "generator"])
@pytest.mark.parametrize("flavor", FLAVORS)
def test_add_variable_collection_keeps_the_stock_container_error(flavor, make, small):
    model = small(flavor)
    with pytest.raises(ValueError) as stock_error:
        stock_archive(flavor).add_variable_collection("vars", make(model))
    assert "list/tuple/set" in str(stock_error.value)
    with pytest.raises(ValueError) as our_error:
        our_archive(flavor).add_variable_collection("vars", make(model))
    assert str(our_error.value) == str(stock_error.value)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_add_variable_collection_stores_each_weight_once(flavor, small, tmp_path):
    model = small(flavor)
    ea = filled(our_archive(flavor), model)
    ea.add_variable_collection("my_vars", tuple(model.variables))
    stored = list(getattr(ea._trackable_root(), "my_vars"))
    assert [type(v) for v in stored if not isinstance(v, tf.Variable)] == []
    assert [id(v) for v in stored] == [id(archive.unwrap_variable(v)) for v in model.variables]
    ea.write_out(str(tmp_path / "m"), verbose=False)
    # A Keras 3 wrapper in the collection would be a second checkpoint entry.
    entries = [n for n, _ in tf.train.list_variables(str(tmp_path / "m" / "variables" /
                                                         "variables"))
               if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(entries) == len(model.variables)
    revived = tf.saved_model.load(str(tmp_path / "m"))
    for saved, weight in zip(revived.my_vars, model.variables):
        np.testing.assert_array_equal(saved.numpy(), np.asarray(weight))
    assert_round_trip(tmp_path / "m", model)


# write_out arguments refused before anything is written: keyword arguments, the
# error type and what its message must say (what was received, what is allowed).
REFUSED = {
    # Python's own error, as the stock method gives it.
    "unknown_keyword": ({"verbsoe": False}, TypeError,
                        r"write_out\(\) got an unexpected keyword argument 'verbsoe'"),
    "unknown_serving_default": ({"serving_default": "nope"}, ValueError,
                                r"serving_default='nope'.*Allowed: 'serve', 'doubled'"),
    "method_names_for_unknown_signature": (
        {"method_names": {"srve": tf.saved_model.REGRESS_METHOD_NAME}}, ValueError,
        r"method_names=\{'srve': \.\.\.\}.*Allowed: 'serve', 'doubled', 'serving_default'"),
    "unknown_method_name": (
        {"method_names": {"serve": "tensorflow/serving/clasify"}}, ValueError,
        r"'tensorflow/serving/clasify'\}\): unknown method name.*"
        r"'tensorflow/serving/classify'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("flavor", FLAVORS)
def test_write_out_refuses_bad_arguments_before_writing(flavor, case, small, tmp_path):
    kwargs, error, message = REFUSED[case]
    with pytest.raises(error, match=message):
        filled(our_archive(flavor), small(flavor)).write_out(str(tmp_path / "m"), **kwargs)
    assert not (tmp_path / "m").exists()


def test_stock_keras3_refuses_an_unknown_keyword_too(small, tmp_path):
    """The reference for `unknown_keyword` above (tf_keras's stock method has no
    `verbose`, so there the misspelt flag is refused all the more)."""
    kwargs, error, message = REFUSED["unknown_keyword"]
    with pytest.raises(error, match=message):
        filled(stock_archive("keras3"), small("keras3")).write_out(str(tmp_path / "s"), **kwargs)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_serving_default_conflicting_with_an_endpoint_of_that_name(flavor, small, tmp_path):
    model = small(flavor)
    ea = our_archive(flavor)
    ea.track(model)
    ea.add_endpoint(name="serving_default", fn=model.call, input_signature=[SPEC])
    with pytest.raises(ValueError, match=r"serving_default='serve'.*already named "
                                         r"'serving_default'"):
        ea.write_out(str(tmp_path / "m"), verbose=False, serving_default="serve")
    assert not (tmp_path / "m").exists()
