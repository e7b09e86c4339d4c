"""Parity over a whole split, as an Apache Beam pipeline built on `RunInference`.

Both sides are Beam ML model handlers, so each is loaded once per worker process
(RunInference keeps it in a `shared.Shared` handle) and rebuilt there from paths:
the same job runs on the DirectRunner (in-process or multi-process) and on
Dataflow through `beam_pipeline_args` (see docs/parity.md).

* `InMemoryModelHandler`: the source model loaded from its path, with the
  endpoints built from the export config and traced, as `export` traced them.
  It runs each endpoint's traced graph (`BuiltArchive.traced_endpoint`), never
  eager Python, so ops the served graph prunes never run here either.
* `ServedModelHandler`: the SavedModel loaded with the TF1 loader, tag ``serve``,
  signatures run by tensor names in a session (TF Serving's path, and the
  loader tfx_bsl's RunInference uses).

The pipeline::

    files -> ReadRecordBlocks -> [Reshuffle] -> RunInference(in-memory)
          -> RunInference(served) -> CompareBlocks -> CombinePerKey -> report rows

Records travel in blocks of `ParityJob.block_size` (the handlers are used
`with_no_batching()`): Beam's per-element cost (~59 us per record for
`ReadFromTFRecord` + `BatchElements` here, see docs/parity.md) is many times
what the model needs per record (~1-6 us), so one element per record could
never keep up with the model. tf_example endpoints get the serialized records;
feature endpoints get the parsed features (transformed when a Transform graph
is given), computed once per block on the in-memory side, in the same traced
function that runs all its endpoints, and fed to both sides. The comparison
streams: each block is reduced to counts, max differences and at most
`max_reported` mismatching examples before the combine, so memory does not grow
with the split.

Results: one report row per endpoint (`run`), and Beam metrics in namespace
`METRICS_NAMESPACE` (`<endpoint>/examples`, `<endpoint>/mismatches`,
`<endpoint>/max_abs_diff_e9` and `<endpoint>/max_rel_diff_e9` distributions in
units of 1e-9, `<endpoint>/mismatch_examples`, `<side>/model_loads` and
`<side>/workers`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from export_archive import describe, examples, writer
from export_archive.config import ExportConfig
from export_archive.constants import SERVE_TAG
from export_archive.rows import CheckRow, SplitParityRow
from export_archive.sources import ModelSource

METRICS_NAMESPACE = "export_archive.parity"
BLOCK_SIZE = 4096           # records per inference call
MAX_REPORTED = 10           # mismatching examples kept per endpoint
# Metrics are integers in Beam's Python SDK: differences are reported in 1e-9 units.
DIFF_METRIC_SCALE = 1e9
IN_MEMORY, SERVED = "in_memory", "served"
CHECK_NAME = "parity_split"   # the check rows' `check`


@dataclasses.dataclass
class ParityJob:
    """Everything a worker needs, as plain paths and JSON: picklable for Beam.

    On Dataflow every path must be readable by the workers (gs://).
    """
    export_dir: str
    model_path: str
    config_json: str
    schema_path: Optional[str] = None
    transform_graph_path: Optional[str] = None
    rtol: float = 1e-5
    atol: float = 1e-5
    block_size: int = BLOCK_SIZE
    max_reported: int = MAX_REPORTED
    # Reshuffle the blocks after reading, so the blocks of one file spread over all
    # workers. None: on every runner but the DirectRunner, which holds a shuffled
    # PCollection in memory whole (its memory would grow with the split); there,
    # the files are the unit of parallelism (Create already spreads them).
    spread_blocks: Optional[bool] = None


class RecordBlock:
    """Consecutive records of one file: the unit both models run on.

    In the process that read it, a block holds the records as the string tensor
    tf.data produced (`tensor`), which the in-memory side runs on as it is. When
    Beam pickles it (a Reshuffle, a runner's data plane), the records travel
    packed, as one bytes buffer and their lengths: a block then pickles as two
    objects, not one per record (in a profile of 200k records, pickling
    per-record objects for the Reshuffle took 0.6 s against 1.1 s for the served
    model), and the tensor is rebuilt from them on the other side. Packing only
    then spares the in-process runners a join and a split per block.
    `len()` is the number of records, so RunInference's own metrics
    (`num_inferences`, `inference_batch_latency_micro_secs`) count examples.
    The in-memory side fills `feeds` (the inputs of feature endpoints) and
    `expected` (its outputs); both then travel with the block to the served side.
    """
    __slots__ = ("source", "start", "data", "lengths", "_tensor", "_records", "feeds",
                 "expected", "skipped")

    def __init__(self, source: str, start: int, lengths: np.ndarray,
                 data: Optional[bytes] = None, tensor=None):
        self.source, self.start, self.lengths = source, start, lengths
        self.data, self._tensor = data, tensor   # one of them: see the class docstring
        self._records: Optional[np.ndarray] = None
        self.feeds: Dict[str, Dict[str, np.ndarray]] = {}
        self.expected: Dict[str, Dict[str, np.ndarray]] = {}
        self.skipped: Dict[str, str] = {}   # endpoint -> why it cannot be compared

    def __len__(self) -> int:
        return len(self.lengths)

    def records_tensor(self):
        if self._tensor is None:
            offsets = np.cumsum(self.lengths) - self.lengths
            self._tensor = tf.strings.substr(tf.constant(self.data), offsets, self.lengths)
        return self._tensor

    @property
    def records(self) -> np.ndarray:
        """The serialized records, as the object array a session is fed."""
        if self._records is None:
            self._records = self.records_tensor().numpy()
        return self._records

    def __getstate__(self):
        if self.data is None:
            self.data = tf.strings.reduce_join(self._tensor).numpy()
        # The tensor and `_records` are rebuilt from `data` on the other side.
        return {k: getattr(self, k) for k in self.__slots__
                if k not in ("_tensor", "_records")}

    def __setstate__(self, state):
        self._tensor = self._records = None
        for k, v in state.items():
            setattr(self, k, v)


# ---- reading


class ReadRecordBlocks(beam.DoFn):
    """Reads a TFRecord file as `RecordBlock`s with tf.data (C++ reader and CRC).

    Not `beam.io.ReadFromTFRecord`: it yields one element per record and checks
    CRCs in Python (~59 us per record here against ~8 us for tf.data). No
    parallelism is lost: Beam's TFRecord source never splits a file either
    (`splittable=False`: TFRecords have no sync markers). On distributed runners
    the Reshuffle after this step spreads the blocks of one file over all workers.
    """

    def __init__(self, block_size: int):
        self.block_size = block_size

    def process(self, path: str) -> Iterable[RecordBlock]:
        compression = "GZIP" if path.endswith(".gz") else None
        dataset = tf.data.TFRecordDataset(path, compression_type=compression)
        # prefetch: tf.data's threads decompress and frame the next blocks while
        # this thread runs the models on the current one. (No dataset.map: it
        # would trace a function for every file.)
        start = 0
        for batch in dataset.batch(self.block_size).prefetch(2):
            lengths = tf.strings.length(batch).numpy().astype(np.int64)
            yield RecordBlock(path, start, lengths, tensor=batch)
            start += len(lengths)


# ---- the two model handlers


def _count_load(side: str, model) -> None:
    """Reports a loaded model once, from its first batch: metrics updated in
    DoFn.setup (where RunInference loads) have no bundle to go to and are lost.
    Which processes loaded a model, and how often, makes "once per worker"
    checkable from the job's metrics (a load per block would show as loads >>
    workers)."""
    if model.reported:
        return
    model.reported = True
    Metrics.counter(METRICS_NAMESPACE, f"{side}/model_loads").inc()
    Metrics.string_set(METRICS_NAMESPACE, f"{side}/workers").add(
        f"{socket.gethostname()}:{os.getpid()}")


class _BlockHandler(ModelHandler):
    """Shared by both sides: a block is one batch (use `.with_no_batching()`)."""

    def __init__(self, job: ParityJob):
        super().__init__()
        self.job = job

    def get_num_bytes(self, batch: RecordBlock) -> int:
        # The default pickles the whole batch just to measure it.
        return int(batch.lengths.sum())

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}.{self.side}"


class _InMemoryModel:
    """The in-memory side, built once per worker process."""
    reported = False

    def __init__(self, job: ParityJob):

        config = ExportConfig.parse(job.config_json)
        builder = None
        if job.schema_path or job.transform_graph_path:
            builder = examples.ExampleEndpointBuilder(job.schema_path, job.transform_graph_path)
        source = ModelSource.wrap(job.model_path, config)
        self.built = writer.build_archive(source, config, builder)  # owns the traced fns' state
        # The served signatures say which inputs each endpoint takes, under which keys.
        signatures = describe.serve_meta_graph(
            describe.read_saved_model_proto(job.export_dir)).signature_def
        self.endpoints = [e for e in config.endpoints if not e.training]  # training: stochastic
        self.kinds = {e.name: e.kind for e in self.endpoints}
        self.fns = {e.name: self.built.traced_endpoint(e.name) for e in self.endpoints}
        self.skipped: Dict[str, str] = {}
        # Feature endpoints take the transformed features (when a Transform graph is
        # given), raw_features endpoints the parsed ones; both matched by input key.
        raw_keys, transformed_keys = set(), set()
        if builder is not None:
            raw_keys = set(builder.raw_feature_spec())
            transformed_keys = (set(builder.tft_output.transformed_feature_spec())
                                if builder.tft_output is not None else raw_keys)
        wanted: Dict[str, Dict[str, Any]] = {}
        self.raw_input, self.call_style = {}, {}
        for e in self.endpoints:
            if e.kind == "tf_example":
                continue
            inputs = signatures[e.name].inputs
            self.raw_input[e.name] = e.kind == "raw_features"
            missing = set(inputs) - (raw_keys if self.raw_input[e.name] else transformed_keys)
            if builder is None:
                self.skipped[e.name] = "no schema or transform graph to parse the examples with"
            elif missing:
                self.skipped[e.name] = f"inputs {sorted(missing)} are not example features"
            else:
                served = {k: tf.TensorSpec([d.size if d.size >= 0 else None
                                            for d in v.tensor_shape.dim], tf.as_dtype(v.dtype))
                          for k, v in inputs.items()}
                self.call_style[e.name], memory = _call_specs(self.fns[e.name], served)
                wanted[e.name] = {SERVED: served, IN_MEMORY: memory}
        self.features_fn = (_features_fn(builder, wanted, self.raw_input)
                            if wanted else None)
        self.run_all = self._run_all_fn()

    def _run_all_fn(self):
        """One traced function: records -> (served-side feeds, every endpoint's outputs).

        One call per block instead of one per endpoint plus the parse: fewer trips
        between Python and TensorFlow, and TensorFlow may run independent endpoints
        side by side on the block.
        """
        features_fn, fns = self.features_fn, {
            name: fn for name, fn in self.fns.items() if name not in self.skipped}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
        def run_all(records):
            served_feeds, memory_feeds = {}, {}
            if features_fn is not None:
                features = features_fn(records)
                # The served side gets the same features, shaped as its signature says.
                served_feeds = {name: f[SERVED] for name, f in features.items()}
                memory_feeds = {name: f[IN_MEMORY] for name, f in features.items()}
            outputs = {}
            for name, fn in fns.items():
                if self.kinds[name] == "tf_example":
                    result = fn(records)
                else:
                    feeds = memory_feeds[name]
                    style = self.call_style[name]
                    result = (fn(feeds) if style == "dict" else
                              fn(*[feeds[k] for k in style]))
                if not isinstance(result, dict):
                    result = {f"output_{i}": o for i, o in enumerate(tf.nest.flatten(result))}
                outputs[name] = result
            return served_feeds, outputs
        return run_all

    def run(self, block: RecordBlock) -> Dict[str, Dict[str, np.ndarray]]:
        block.skipped = self.skipped
        records = block.records_tensor()
        block._records = records.numpy()   # what the served side feeds
        served_feeds, outputs = self.run_all(records)
        block.feeds = {name: {k: v.numpy() for k, v in f.items()}
                       for name, f in served_feeds.items()}
        return {name: {k: v.numpy() for k, v in result.items()}
                for name, result in outputs.items()}


def _call_specs(fn, served: Dict[str, Any]):
    """How the traced endpoint takes the features the signature names `served`:
    ("dict", {key: spec}) for one dict argument (Keras dict-input models, raw
    features), or ([key, ...], {key: spec}) for positional tensors, matched to the
    signature's keys by spec name (by position for a single input)."""
    args, _ = fn.structured_input_signature
    if len(args) == 1 and isinstance(args[0], dict):
        return "dict", dict(args[0])
    specs = tf.nest.flatten(args)
    if len(specs) == 1 and len(served) == 1:
        key = next(iter(served))
        return [key], {key: specs[0]}
    keys = [s.name for s in specs]
    if sorted(keys) != sorted(served):
        raise ValueError(
            f"parity: the traced endpoint takes inputs {keys} but its signature "
            f"{sorted(served)}; cannot match features to both. Name the input specs "
            "like the signature's inputs (input_signature names).")
    return keys, dict(zip(keys, specs))


def _features_fn(builder, wanted, raw_input):
    """One traced function: records -> {endpoint: {input key: adapted feature}}.

    Parse, Transform and adapt once per block, in a graph (the eager Transform
    layer costs milliseconds per call).
    """
    spec = builder.raw_feature_spec()
    needs_transform = any(not raw_input[name] for name in wanted)
    layer = (builder.tft_output.transform_features_layer()
             if builder.tft_output is not None and needs_transform else None)

    # autograph=False: plain Python over fixed dicts, nothing to convert (converting
    # cost seconds of the first block).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def features(records):
        raw = tf.io.parse_example(records, spec)
        transformed = layer(raw) if layer is not None else raw
        out = {}
        for name, sides in wanted.items():
            features = raw if raw_input[name] else transformed
            out[name] = {side: {k: examples.adapt(features[k], s, k) for k, s in specs.items()}
                         for side, specs in sides.items()}
        return out
    features.layer = layer  # keeps the layer's tables alive with the function
    return features


class InMemoryModelHandler(_BlockHandler):
    """RunInference handler for the in-memory model source (rebuilt from paths)."""
    side = IN_MEMORY

    def load_model(self) -> _InMemoryModel:
        return _InMemoryModel(self.job)

    def run_inference(self, batch: RecordBlock, model: _InMemoryModel,
                      inference_args=None) -> Iterable[PredictionResult]:
        _count_load(self.side, model)
        yield PredictionResult(batch, model.run(batch), IN_MEMORY)


class _ServedModel:
    """The exported SavedModel in a TF1 session, the way TF Serving runs it."""
    reported = False

    def __init__(self, job: ParityJob, endpoints: List[str]):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta_graph = tf.compat.v1.saved_model.loader.load(
            self.session, [SERVE_TAG], job.export_dir)
        self.signatures = {name: meta_graph.signature_def[name] for name in endpoints}
        self.tensor = self.graph.get_tensor_by_name

    def run(self, block: RecordBlock) -> Dict[str, Dict[str, np.ndarray]]:
        # All endpoints in one session.run: one call per block, each signature's
        # outputs computed from its own inputs, as separate Predict calls would.
        fetches, feeds = {}, {}
        for name in block.expected:
            sig = self.signatures[name]
            if name in block.feeds:
                for key, info in sig.inputs.items():
                    feeds[self.tensor(info.name)] = block.feeds[name][key]
            else:
                feeds[self.tensor(next(iter(sig.inputs.values())).name)] = block.records
            fetches[name] = {k: self.tensor(v.name) for k, v in sig.outputs.items()}
        return self.session.run(fetches, feeds)


class ServedModelHandler(_BlockHandler):
    """RunInference handler for the exported SavedModel (TF1 loader, tag serve)."""
    side = SERVED

    def load_model(self) -> _ServedModel:
        config = ExportConfig.parse(self.job.config_json)
        return _ServedModel(self.job, [e.name for e in config.endpoints if not e.training])

    def run_inference(self, batch: RecordBlock, model: _ServedModel,
                      inference_args=None) -> Iterable[PredictionResult]:
        _count_load(self.side, model)
        yield PredictionResult(batch, model.run(batch), SERVED)


# ---- comparison


@dataclasses.dataclass
class ParityStats:
    endpoint: str
    count: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatches: int = 0
    skipped: str = ""
    problem: str = ""   # why the outputs cannot be compared value by value
    # The first mismatching examples, by (file, record index).
    samples: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    def merge(self, other: "ParityStats", keep: int) -> "ParityStats":
        samples = sorted(self.samples + other.samples,
                         key=lambda s: (s["file"], s["index"], s["output"]))[:keep]
        return ParityStats(self.endpoint, self.count + other.count,
                           max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel),
                           self.mismatches + other.mismatches, self.skipped or other.skipped,
                           self.problem or other.problem, samples)

    def to_row(self) -> CheckRow:
        if self.skipped:
            return CheckRow(CHECK_NAME, self.endpoint, True, f"skipped: {self.skipped}")
        detail = (f"{self.count} records, max abs diff {self.max_abs:.3g}, max rel diff "
                  f"{self.max_rel:.3g}, {self.mismatches} outside tolerance")
        if self.problem:
            detail += f"; {self.problem}"
        if self.samples:
            detail += "; first: " + ", ".join(
                f"{os.path.basename(s['file'])}#{s['index']} {s['output']} "
                f"(abs diff {s['max_abs_diff']:.3g})" for s in self.samples)
        return SplitParityRow(CHECK_NAME, self.endpoint, self.mismatches == 0 and self.count > 0,
                              detail, count=self.count, mismatches=self.mismatches,
                              max_abs_diff=self.max_abs, max_rel_diff=self.max_rel,
                              mismatch_examples=self.samples)


class CompareBlocks(beam.DoFn):
    """Per block and endpoint: counts, max differences, the first mismatches."""

    def __init__(self, job: ParityJob):
        self.job = job

    def process(self, result: PredictionResult):
        block, served = result.example, result.inference
        job = self.job
        for name, expected in block.expected.items():
            stats = ParityStats(name, count=len(block))
            got_all = served[name]
            problem = (f"output keys differ: served {sorted(got_all)}, in memory "
                       f"{sorted(expected)}" if sorted(expected) != sorted(got_all) else
                       "; ".join(f"{k}: served shape {list(np.shape(got_all[k]))}, in memory "
                                 f"{list(np.shape(v))}" for k, v in expected.items()
                                 if np.shape(v) != np.shape(got_all[k])))
            if problem:
                # A client would get other keys or shapes than the model gives: every
                # record of the block is a mismatch.
                stats.mismatches, stats.problem = len(block), problem
                self._metrics(stats)
                yield name, stats
                continue
            bad_rows = np.zeros(len(block), dtype=bool)
            worst = {}
            for key, want in expected.items():
                want, got, diff, bad = _compare(want, got_all[key], len(block), job)
                stats.max_abs = max(stats.max_abs, float(diff.max(initial=0.0)))
                stats.max_rel = max(stats.max_rel, float(
                    (diff / (np.abs(want) + 1e-12)).max(initial=0.0)) if diff.any() else 0.0)
                bad_rows |= bad
                for row in np.flatnonzero(bad)[:job.max_reported]:
                    worst.setdefault(int(row), []).append(
                        (key, want[row], got[row], float(diff[row].max(initial=0.0))))
            stats.mismatches = int(np.count_nonzero(bad_rows))
            for row in sorted(worst)[:job.max_reported]:
                for key, want, got, abs_diff in worst[row]:
                    stats.samples.append({
                        "file": block.source, "index": block.start + row, "output": key,
                        "expected": _plain(want), "served": _plain(got),
                        "max_abs_diff": abs_diff, "features": _features(block.records[row])})
            stats.samples = stats.samples[:job.max_reported]
            self._metrics(stats)
            yield name, stats
        for name, reason in block.skipped.items():
            yield name, ParityStats(name, skipped=reason)

    @staticmethod
    def _metrics(stats: ParityStats) -> None:
        ns, name = METRICS_NAMESPACE, stats.endpoint
        Metrics.counter(ns, f"{name}/examples").inc(stats.count)
        Metrics.counter(ns, f"{name}/mismatches").inc(stats.mismatches)
        Metrics.distribution(ns, f"{name}/max_abs_diff_e9").update(
            int(round(stats.max_abs * DIFF_METRIC_SCALE)))
        Metrics.distribution(ns, f"{name}/max_rel_diff_e9").update(
            int(min(stats.max_rel * DIFF_METRIC_SCALE, 2 ** 62)))
        for s in stats.samples:
            Metrics.string_set(ns, f"{name}/mismatch_examples").add(
                f"{s['file']}#{s['index']}")


def _compare(want, got, rows: int, job: ParityJob):
    """(want, got, |diff|, bad row mask), one row per record. Numbers compare within
    rtol/atol; strings (a classify endpoint's classes) must be equal, and count as
    difference 1 where they are not."""
    want, got = np.asarray(want).reshape(rows, -1), np.asarray(got).reshape(rows, -1)
    if want.dtype.kind in "biuf" and got.dtype.kind in "biuf":
        want, got = want.astype(np.float64), got.astype(np.float64)
        diff = np.abs(want - got)
        bad = ~np.isclose(got, want, rtol=job.rtol, atol=job.atol).all(axis=1)
        return want, got, diff, bad
    unequal = want != got
    return want, got, unequal.astype(np.float64), unequal.any(axis=1)


def _plain(values: np.ndarray) -> list:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in values.tolist()]


def _features(record: bytes) -> Dict[str, list]:
    """A mismatching record as {feature: values}, for the report."""
    example = tf.train.Example.FromString(record)
    out = {}
    for key, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        out[key] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                    for v in values]
    return out


class MergeStats(beam.CombineFn):
    def __init__(self, keep: int):
        self.keep = keep

    def create_accumulator(self):
        return None

    def add_input(self, acc, stats):
        return stats if acc is None else acc.merge(stats, self.keep)

    def merge_accumulators(self, accs):
        merged = None
        for acc in accs:
            if acc is not None:
                merged = acc if merged is None else merged.merge(acc, self.keep)
        return merged

    def extract_output(self, acc):
        return acc


# ---- the pipeline


def _attach_expected(result: PredictionResult) -> RecordBlock:
    result.example.expected = result.inference
    return result.example


class SplitParity(beam.PTransform):
    """Example file paths -> (endpoint, merged `ParityStats`)."""

    def __init__(self, job: ParityJob):
        super().__init__()
        self.job = job

    def expand(self, files):
        job = self.job
        blocks = files | "ReadBlocks" >> beam.ParDo(ReadRecordBlocks(job.block_size))
        spread = job.spread_blocks
        if spread is None:
            runner = files.pipeline.options.view_as(StandardOptions).runner
            spread = runner is not None and "direct" not in str(runner).lower()
        if spread:
            # Fans the blocks of a few large files out to every worker (fusion would
            # otherwise keep each file's blocks on the worker reading it).
            blocks = blocks | "Spread" >> beam.Reshuffle()
        return (blocks
                | "InMemory" >> RunInference(InMemoryModelHandler(job).with_no_batching())
                | "AttachExpected" >> beam.Map(_attach_expected)
                | "Served" >> RunInference(ServedModelHandler(job).with_no_batching())
                | "Compare" >> beam.ParDo(CompareBlocks(job))
                | "PerEndpoint" >> beam.CombinePerKey(MergeStats(job.max_reported)))


@dataclasses.dataclass
class ParityRun:
    rows: List[CheckRow]
    metrics: Dict[str, Any]   # "<metric name>": value, from METRICS_NAMESPACE


def run_job(job: ParityJob, example_files: List[str], output_path: str,
            beam_pipeline_args: Optional[List[str]] = None) -> ParityRun:
    """Runs the parity pipeline over `example_files`; returns its rows and metrics.

    The rows go through `output_path` (JSON lines; a gs:// path on Dataflow), since
    workers on a remote runner cannot hand objects back to this process.
    """

    if not example_files:
        raise ValueError("split parity needs example files: got none. Pass the TFRecord "
                         "files of the split to compare (e.g. an Examples artifact's "
                         "Split-eval/*).")
    pipeline = beam.Pipeline(options=PipelineOptions(beam_pipeline_args or []))
    _ = (pipeline
         | "Files" >> beam.Create(example_files)
         | "Parity" >> SplitParity(job)
         | "Rows" >> beam.Map(lambda kv: json.dumps(kv[1].to_row().to_json()))
         | "Write" >> beam.io.WriteToText(output_path, shard_name_template=""))
    result = pipeline.run()
    result.wait_until_finish()
    with tf.io.gfile.GFile(output_path) as f:
        rows = [CheckRow.from_json(json.loads(line)) for line in f if line.strip()]
    return ParityRun(sorted(rows, key=lambda r: r.endpoint), _metrics(result))


def local_workers(beam_pipeline_args: Optional[List[str]] = None) -> Optional[int]:
    """How many processes of this machine load the model for the job, or None when the
    runner is remote (Dataflow's workers have their own memory).

    The DirectRunner's multi_processing mode starts `direct_num_workers` processes
    (0: one per core), each with its own copies; its in-process modes share one.
    """
    options = PipelineOptions(beam_pipeline_args or [])
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct"):
        return None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 1
    return direct.direct_num_workers or os.cpu_count() or 1


def run(job: ParityJob, example_files: List[str], output_path: str,
        beam_pipeline_args: Optional[List[str]] = None) -> List[CheckRow]:
    """`run_job`'s report rows, one per endpoint: a `SplitParityRow` (a plain
    `CheckRow` for an endpoint the job skipped)."""
    return run_job(job, example_files, output_path, beam_pipeline_args).rows


def _metrics(result) -> Dict[str, Any]:
    """The job's committed metrics in METRICS_NAMESPACE (and its handlers' namespaces)."""
    out: Dict[str, Any] = {}
    queried = result.metrics().query(MetricsFilter())
    for kind, results in queried.items():
        for r in results:
            if not r.key.metric.namespace.startswith(METRICS_NAMESPACE):
                continue
            value = r.committed if r.committed is not None else r.attempted
            name = r.key.metric.name
            if kind == "distributions":
                value = {"min": value.min, "max": value.max, "sum": value.sum,
                         "count": value.count}
            elif kind == "string_sets":
                value = sorted(value)
            prefix = r.key.metric.namespace[len(METRICS_NAMESPACE):].lstrip(".")
            key = f"{prefix}:{name}" if prefix else name
            # The same metric from several steps or workers: merge them.
            if key in out:
                old = out[key]
                if kind == "counters":
                    value += old
                elif kind == "string_sets":
                    value = sorted(set(value) | set(old))
                elif kind == "distributions":
                    value = {"min": min(value["min"], old["min"]),
                             "max": max(value["max"], old["max"]),
                             "sum": value["sum"] + old["sum"],
                             "count": value["count"] + old["count"]}
            out[key] = value
    return out
