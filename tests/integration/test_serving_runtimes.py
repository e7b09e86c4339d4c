"""Exports of this lane's TF, served by real TF 2.15 and 2.14 (Vertex AI's newest images).

Every Keras / TF model of the zoo (tests/zoo/models.py: Keras 3 and tf_keras, lookup
tables, text vectorization, RNNs, attention, mixed precision, a tf.Module) is exported
with the serving check on and `serving_runtime` set; every export is then loaded by
the TF1 SavedModel loader in a real TF 2.15 and a real TF 2.14 process (one process
per runtime for all models: `helpers/runtime_runner.py`), its warmup file replayed,
its signatures run by tensor name, and the answers compared with the exporting
TF's within 1e-5. Where our check refuses an export for a runtime, the refusal
names the op, and the real runtime must indeed fail to load it.

The runtimes are side virtualenvs made once under .cache/runtimes/
(`helpers/serving_runtimes.py`); a runtime that cannot be made fails these tests.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import check, runtimes
from export_archive.describe import describe
from helpers import serving_runtimes
from zoo import models

pytestmark = pytest.mark.integration

RUNTIMES = ("2.15", "2.14")
TOLERANCE = 1e-5
FLOAT16_TOLERANCE = 4e-3
ZOO = tuple(e.id for e in models.ENTRIES)
TF_MINOR = tuple(int(p) for p in tf.__version__.split(".")[:2])


class SpectrumModule(tf.Module):
    """Uses FFTND, an op TF 2.15 added: TF 2.14 cannot load it. (No TF has a CPU
    kernel for it, so it is loaded, not called.)"""

    @tf.function(input_signature=[tf.TensorSpec((None, 4, 4), tf.float32, name="x")])
    def __call__(self, x):
        return tf.math.abs(tf.signal.fftnd(tf.cast(x, tf.complex64), fft_length=[4, 4],
                                           axes=[1, 2]))


class WebpModule(tf.Module):
    """Uses DecodeWebP, an op added after TF 2.16: Vertex's TF 2.15 image cannot load
    it. (Loaded, not called: no WebP image to feed it here.)"""

    @tf.function(input_signature=[tf.TensorSpec((), tf.string, name="image")])
    def __call__(self, image):
        return tf.reduce_mean(tf.cast(tf.io.decode_webp(image), tf.float32))


class PolicyModule(tf.Module):
    """GatherNd with bad_indices_policy="IGNORE" (an attr TF 2.17 added): TF 2.15 and
    2.14 would drop the attr and raise on an out-of-range index instead of giving 0."""

    def __init__(self):
        super().__init__()
        self.table = tf.Variable(np.arange(12, dtype="float32").reshape(4, 3))

    @tf.function(input_signature=[tf.TensorSpec((None, 1), tf.int32, name="index")])
    def __call__(self, index):
        return tf.gather_nd(self.table, index, bad_indices_policy="IGNORE")


def _policy_sample(batch, seed):
    """Row indices, the last one out of range (9 of 4 rows): "IGNORE" gives zeros."""
    index = models.rng(seed).integers(0, 4, (batch, 1)).astype("int32")
    index[-1] = 9
    return index


# (id, build, sample: None to load only (the export is not checked), the runtimes
# our check refuses it for -> the op or attr it must name)
EXTRA = [("fftnd", SpectrumModule, None, {"2.14": "'FFTND'"})]
if TF_MINOR >= (2, 17):
    EXTRA.append(("gather_nd_policy", PolicyModule, _policy_sample,
                  {v: "'bad_indices_policy'" for v in ("2.14", "2.15", "2.16")}))
if hasattr(tf.io, "decode_webp"):
    EXTRA.append(("decode_webp", WebpModule, None,
                  {v: "'DecodeWebP'" for v in ("2.14", "2.15", "2.16")}))


def _config(endpoints, runtime):
    return {"endpoints": list(endpoints), "serving_runtime": runtime,
            "check": {"enabled": True}}


def _calls(export_dir, x):
    """{signature: {key: array}}: the sample fed to every signature of the export."""
    calls = {}
    for sig in describe(export_dir):
        if isinstance(x, dict):
            assert sorted(x) == sorted(sig.inputs), (sig.name, sorted(sig.inputs))
            calls[sig.name] = dict(x)
        else:
            assert len(sig.inputs) == 1, (sig.name, sorted(sig.inputs))
            calls[sig.name] = {next(iter(sig.inputs)): x}
    return calls


def _exporter_answers(export_dir, calls):
    loaded = tf.saved_model.load(export_dir)
    return {name: {k: v.numpy() for k, v in loaded.signatures[name](
        **{key: tf.constant(value) for key, value in inputs.items()}).items()}
        for name, inputs in calls.items()}


class Export:
    def __init__(self, model_id, export_dir, calls, refused, random=(), tolerance=TOLERANCE):
        self.id, self.dir, self.calls, self.refused = model_id, export_dir, calls, refused
        self.expected = _exporter_answers(export_dir, calls)
        # Signatures that draw a random mask on every call (training-mode Dropout):
        # no two calls agree, so there the runtime's answer is compared by dtype and
        # shape only.
        self.random = set(random)
        self.tolerance = tolerance


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every model exported once, with the check on for the oldest runtime it serves in
    (its serving_runtime rows must pass there), plus what the check says for the rest."""
    root = tmp_path_factory.mktemp("runtimes")
    out = []
    for model_id in ZOO:
        entry = models.entry(model_id)
        source = str(root / model_id / "Format-Serving")
        models.save_source(entry, entry.build(), source)
        export_dir = str(root / model_id / "export")
        export_archive.export(_source_path(entry, source), _config(entry.endpoints, "2.14"),
                              export_dir)
        out.append(Export(model_id, export_dir, _calls(export_dir, entry.sample(3, 7)), {},
                          random=entry.seeded,
                          # float16 compute: a few float16 ulps (as tests/zoo).
                          tolerance=FLOAT16_TOLERANCE if entry.float16 else TOLERANCE))
    for model_id, build, sample, refused in EXTRA:
        runtime = next(r for r in runtimes.available() if r not in refused)
        export_dir = str(root / model_id / "export")
        export_archive.export(_saved_module(build, root / model_id), _config(
            [{"name": "serve", "fn": "call"}], runtime), export_dir, check=sample is not None)
        calls = _calls(export_dir, sample(3, 7)) if sample is not None else {}
        out.append(Export(model_id, export_dir, calls, refused))
    return out


def _saved_module(build, where):
    """A tf.Module as a Trainer leaves one: a SavedModel with its traced __call__."""
    path = str(where / "module")
    tf.saved_model.save(build(), path)
    return path


def _source_path(entry, source):
    name = {models.KERAS_FILE: "model.keras", models.TF_KERAS_H5: "model.h5"}.get(entry.source)
    return os.path.join(source, name) if name else source


def test_the_check_refuses_an_op_the_runtime_lacks_naming_it(tmp_path):
    """The export itself fails (CheckFailed, nothing written): op, signature, the TF
    versions that have it, and the fix are in the message."""
    out = str(tmp_path / "export")
    with pytest.raises(check.CheckFailed) as failed:
        export_archive.export(_saved_module(SpectrumModule, tmp_path), _config(
            [{"name": "serve", "fn": "call"}], "2.14"), out)
    rows = [r for r in failed.value.report.failures() if r["check"] == runtimes.CHECK_NAME]
    assert len(rows) == 1, failed.value.report.format()
    message = rows[0]["endpoint"] + ": " + rows[0]["detail"]
    assert "serving_runtime: op 'FFTND' is not registered in TF 2.14" in message, message
    assert "registered in TF 2.15, 2.16, 2.21" in message, message
    assert "serve, serving_default" in message, message
    assert "set serving_runtime to that" in message, message
    assert not os.path.exists(os.path.join(out, "saved_model.pb"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exports_serve_in_the_real_runtime(exports, runtime):
    """Each export our check passes for `runtime` loads there, replays its warmup and
    answers as the exporting TF does; each one it refuses, the runtime cannot serve
    (for a missing op: it fails to load)."""
    verdicts = {e.id: runtimes.check_export(e.dir, runtime) for e in exports}
    result = serving_runtimes.serve(runtime, [{"id": e.id, "export_dir": e.dir,
                                               "calls": e.calls} for e in exports])
    assert result["tensorflow"].startswith(runtime + "."), result["tensorflow"]
    # What was measured (shown with -s; docs/runtimes.md quotes it).
    notes = result["stderr"].count("debug_name which is not in the op definition")
    verdict = {e.id: "refused" if any(not r["passed"] for r in verdicts[e.id]) else "passed"
               for e in exports}
    print(f"\nTF {result['tensorflow']} (exported with TF {tf.__version__}): {notes} "
          "'debug_name ... not in the op definition' log lines; " + "; ".join(
              f"{e.id}: {verdict[e.id]} by our check, load {result['jobs'][e.id]['load'][:60]}"
              f", warmup {result['jobs'][e.id].get('warmup')}" for e in exports))
    for e in exports:
        rows, served = verdicts[e.id], result["jobs"][e.id]
        refused = [r for r in rows if not r["passed"]]
        if runtime in e.refused:
            assert refused, f"{e.id}: our check passed it for TF {runtime}: {rows}"
            assert any(e.refused[runtime] in r["detail"] for r in refused), refused
            if refused[0]["detail"].startswith(f"{runtimes.FIELD}: op "):
                assert served["load"] != "ok", f"{e.id}: TF {runtime} loaded it after all"
                assert "Op type not registered" in served["load"], served["load"]
            elif served["load"] == "ok" and e.calls:
                # The runtime drops the attr, loads, and computes something else.
                assert "error" in served or not all(
                    np.allclose(served["outputs"][n][k], v) for n, out in e.expected.items()
                    for k, v in out.items()), f"{e.id}: TF {runtime} answers as the exporter"
            continue
        assert not refused, f"{e.id}: refused for TF {runtime}: {refused}"
        assert served["load"] == "ok", f"{e.id}: TF {runtime} failed to load it: {served}"
        if os.path.exists(os.path.join(e.dir, check.WARMUP_FILE)):
            assert isinstance(served["warmup"], int) and served["warmup"] > 0, \
                f"{e.id}: warmup replay in TF {runtime}: {served['warmup']}"
        assert "error" not in served, f"{e.id}: {served['error']}"
        for name, expected in e.expected.items():
            got = served["outputs"][name]
            assert sorted(got) == sorted(expected), (e.id, name)
            for key, want in expected.items():
                got_value = np.asarray(got[key])
                if name in e.random:
                    assert (got_value.shape, got_value.dtype) == (want.shape, want.dtype), \
                        (e.id, name, key)
                    continue
                np.testing.assert_allclose(got_value, want, rtol=e.tolerance,
                                           atol=e.tolerance,
                                           err_msg=f"{e.id} {name} {key} in TF {runtime}")


def test_a_made_runtime_is_reused_from_its_stamp():
    for runtime in RUNTIMES:
        serving_runtimes.ensure(runtime)   # makes it, unless a test above did
        serving_runtimes.ensure(runtime)
        assert serving_runtimes.TIMINGS[runtime]["installed"] is False, \
            f"TF {runtime} was installed again despite its stamp"


# ---- the rules, on hand-built MetaGraphs (exported by "TF 2.16.2")


def _meta_graph(main_nodes, functions=(), signature_output="call"):
    """A `serve` MetaGraph: `main_nodes` [(name, op, attrs)], a signature `serve`
    whose output is `signature_output`, and library functions [(name, [(op, attrs)])];
    attrs map to AttrValue kwargs."""
    from tensorflow.core.framework import attr_value_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.meta_info_def.tensorflow_version = "2.16.2"
    meta_graph.meta_info_def.tags.append("serve")
    for name, op, attrs in main_nodes:
        node = meta_graph.graph_def.node.add(name=name, op=op)
        for key, value in attrs.items():
            node.attr[key].CopyFrom(attr_value_pb2.AttrValue(**value))
    for fn_name, nodes in functions:
        fn = meta_graph.graph_def.library.function.add()
        fn.signature.name = fn_name
        for i, (op, attrs) in enumerate(nodes):
            node = fn.node_def.add(name=f"n{i}", op=op)
            for key, value in attrs.items():
                node.attr[key].CopyFrom(attr_value_pb2.AttrValue(**value))
    meta_graph.signature_def["serve"].outputs["y"].name = signature_output + ":0"
    return meta_graph


def _call(fn_name):
    from tensorflow.core.framework import attr_value_pb2
    return {"f": {"func": attr_value_pb2.NameAttrList(name=fn_name)}}


def test_a_default_valued_attr_the_runtime_lacks_passes():
    meta_graph = _meta_graph([("call", "StatefulPartitionedCall", _call("fn"))],
                             [("fn", [("MatMul", {"T": {"type": 1}, "grad_a": {"b": False},
                                                  "_read_only": {"b": True}})])])
    rows = runtimes.check_meta_graph(meta_graph, "2.15")
    assert [r["passed"] for r in rows] == [True], rows


def test_a_non_default_attr_the_runtime_lacks_is_refused_naming_the_signature():
    meta_graph = _meta_graph([("call", "StatefulPartitionedCall", _call("outer"))],
                             [("outer", [("PartitionedCall", _call("inner"))]),
                              ("inner", [("MatMul", {"T": {"type": 1}, "grad_a": {"b": True}})])])
    rows = runtimes.check_meta_graph(meta_graph, "2.15")
    assert [r["passed"] for r in rows] == [False], rows
    assert rows[0]["endpoint"] == "serve"
    assert rows[0]["detail"].startswith(
        "serving_runtime: attr 'grad_a' of op 'MatMul' has a non-default value and is not "
        "declared by TF 2.15 (serving_runtime; registry of TF 2.15.1); registered in TF "
        "2.16, 2.21."), rows[0]["detail"]
    assert "Fix: serve it on TF 2.16 or newer and set serving_runtime to that" in rows[0]["detail"]


def test_a_missing_op_outside_any_signature_is_the_load_graph_s():
    meta_graph = _meta_graph([("call", "Identity", {}),
                              ("restore", "StatefulPartitionedCall", _call("fn"))],
                             [("fn", [("RFFTND", {})])])
    rows = runtimes.check_meta_graph(meta_graph, "2.14")
    assert [(r["passed"], r["endpoint"]) for r in rows] == [(False, runtimes.LOAD_GRAPH)], rows
    assert "op 'RFFTND' is not registered in TF 2.14" in rows[0]["detail"]
    assert "registered in TF 2.15, 2.16, 2.21" in rows[0]["detail"]


def test_an_op_no_registry_has_says_so():
    rows = runtimes.check_meta_graph(_meta_graph([("call", "MyCustomOp", {})]), "2.21")
    assert not rows[0]["passed"]
    assert "in none of the shipped registries (2.14, 2.15, 2.16, 2.21)" in rows[0]["detail"]
    assert "load the op library the op comes from" in rows[0]["detail"]


def test_var_handle_debug_name_is_informational():
    """TF >= 2.15 writes the variable's name into VarHandleOp's debug_name; TF 2.14
    logs "NodeDef mentions attribute debug_name which is not in the op definition"
    and serves (the real TF 2.14 runs above show it)."""
    meta_graph = _meta_graph([("call", "VarHandleOp", {
        "dtype": {"type": 1}, "shape": {"shape": {}}, "shared_name": {"s": b"dense/kernel"},
        "debug_name": {"s": b"dense/kernel/"}})])
    rows = runtimes.check_meta_graph(meta_graph, "2.14")
    assert rows[0]["passed"], rows
    assert "informational attrs it lacks and drops at load: VarHandleOp.debug_name" \
        in rows[0]["detail"]


def test_the_check_command_checks_the_serving_runtime(exports):
    report = check.check_saved_model(exports[0].dir, serving_runtime="2.14", latency_runs=0)
    rows = [r for r in report.results if r["check"] == runtimes.CHECK_NAME]
    assert [r["passed"] for r in rows] == [True], report.format()
    assert "TF 2.14" in rows[0]["detail"]
