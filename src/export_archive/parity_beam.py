"""Parity over a whole split, as an Apache Beam pipeline.

Every worker rebuilds both sides from paths, so the same code runs on the
DirectRunner here and on Dataflow through `beam_pipeline_args`:

* the in-memory model: the source model loaded from its path, with the
  endpoints built from the export config and traced (as `export` traced them;
  run as graphs, so ops the served graph prunes never run here either);
* the served model: the SavedModel loaded with the TF1 loader, tag ``serve``,
  signatures run by tensor names in a session (TF Serving's path).

tf_example endpoints get the serialized records; feature endpoints get the
parsed features (transformed when a Transform graph is given), matched to
their inputs by name. The result per endpoint: count, max abs/rel difference
and the number of records outside tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

BATCH_SIZE = 64


@dataclasses.dataclass
class ParityJob:
    """Everything a worker needs, as plain paths and JSON: picklable for Beam."""
    export_dir: str
    model_path: str
    config_json: str
    schema_path: Optional[str] = None
    transform_graph_path: Optional[str] = None
    rtol: float = 1e-5
    atol: float = 1e-5


@dataclasses.dataclass
class ParityStats:
    endpoint: str
    count: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatches: int = 0
    skipped: str = ""

    def merge(self, other: "ParityStats") -> "ParityStats":
        return ParityStats(self.endpoint, self.count + other.count,
                           max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel),
                           self.mismatches + other.mismatches, self.skipped or other.skipped)

    def to_row(self) -> Dict[str, Any]:
        if self.skipped:
            return {"check": "parity_split", "endpoint": self.endpoint, "passed": True,
                    "detail": f"skipped: {self.skipped}"}
        return {"check": "parity_split", "endpoint": self.endpoint,
                "passed": self.mismatches == 0 and self.count > 0,
                "detail": f"{self.count} records, max abs diff {self.max_abs:.3g}, max rel diff "
                          f"{self.max_rel:.3g}, {self.mismatches} outside tolerance"}


class _CompareBatch:
    """Loads both sides once per worker (Beam DoFn.setup) and compares batches."""

    def __init__(self, job: ParityJob):
        self.job = job

    def setup(self):
        import tensorflow as tf
        from export_archive import examples, writer
        from export_archive.config import ExportConfig
        from export_archive.sources import ModelSource

        job = self.job
        self.config = ExportConfig.parse(job.config_json)
        builder = None
        if job.schema_path or job.transform_graph_path:
            builder = examples.ExampleEndpointBuilder(job.schema_path, job.transform_graph_path)
        self.builder = builder
        source = ModelSource.wrap(job.model_path, self.config)
        built = writer.build_archive(source, self.config, builder)
        # The traced graphs, run the way the server runs them (writer.BuiltArchive).
        self.fns = {name: built.traced_endpoint(name) for name in built.endpoint_names}
        self.built = built   # owns the archive the traced functions capture
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.meta_graph = tf.compat.v1.saved_model.loader.load(
            self.session, ["serve"], job.export_dir)
        self.feature_spec = builder.raw_feature_spec() if builder else None

    def compare(self, records: List[bytes]) -> Iterable[ParityStats]:
        import tensorflow as tf
        for endpoint in self.config.endpoints:
            if endpoint.training:
                continue  # values are stochastic or stateful by design
            sig = self.meta_graph.signature_def[endpoint.name]
            stats = ParityStats(endpoint.name)
            feeds, args = self._inputs(endpoint, sig, records)
            if feeds is None:
                stats.skipped = args
                yield stats
                continue
            keys = sorted(sig.outputs)
            served = self.session.run(
                [self.graph.get_tensor_by_name(sig.outputs[k].name) for k in keys],
                {self.graph.get_tensor_by_name(sig.inputs[k].name): v for k, v in feeds.items()})
            outputs = self.fns[endpoint.name](*args)
            expected = (outputs if isinstance(outputs, dict) else
                        {f"output_{i}": o for i, o in enumerate(tf.nest.flatten(outputs))})
            for key, value in zip(keys, served):
                want = np.asarray(expected[key], dtype=np.float64)
                got = np.asarray(value, dtype=np.float64)
                diff = np.abs(want - got)
                bad = ~np.isclose(got, want, rtol=self.job.rtol, atol=self.job.atol)
                stats.max_abs = max(stats.max_abs, float(diff.max(initial=0.0)))
                stats.max_rel = max(stats.max_rel,
                                    float((diff / (np.abs(want) + 1e-12)).max(initial=0.0)))
                rows = bad.reshape(len(records), -1).any(axis=1) if bad.size else bad
                stats.mismatches += int(np.count_nonzero(rows))
            stats.count = len(records)
            yield stats

    def _inputs(self, endpoint, sig, records):
        import tensorflow as tf
        from export_archive import examples
        if endpoint.kind == "tf_example":
            key = next(iter(sig.inputs))
            return {key: np.array(records, dtype=object)}, [tf.constant(records)]
        if self.feature_spec is None:
            return None, "no schema or transform graph to parse the examples with"
        features = tf.io.parse_example(tf.constant(records), self.feature_spec)
        if self.builder.tft_output is not None:
            features = self.builder.tft_output.transform_features_layer()(features)
        missing = sorted(set(sig.inputs) - set(features))
        if missing:
            return None, f"inputs {missing} are not example features"
        # One dict argument keyed like the signature: the shape Keras dict-input
        # models and signature endpoints take.
        feeds = {}
        for key, info in sig.inputs.items():
            spec = tf.TensorSpec([d.size if d.size >= 0 else None for d in info.tensor_shape.dim],
                                 tf.as_dtype(info.dtype))
            feeds[key] = examples.adapt(features[key], spec, key).numpy()
        if len(sig.inputs) == 1:
            return feeds, [tf.constant(next(iter(feeds.values())))]
        return feeds, [{k: tf.constant(v) for k, v in feeds.items()}]


def run(job: ParityJob, example_files: List[str], output_path: str,
        beam_pipeline_args: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Runs the parity pipeline over `example_files`; returns one report row per endpoint.

    The rows go through `output_path` (JSON lines; a gs:// path on Dataflow), since
    workers on a remote runner cannot hand objects back to this process.
    """
    import json

    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    class CompareFn(beam.DoFn):
        def __init__(self, job):
            self.comparer = _CompareBatch(job)

        def setup(self):
            self.comparer.setup()

        def process(self, batch):
            yield from ((s.endpoint, s) for s in self.comparer.compare(batch))

    compression = (beam.io.filesystem.CompressionTypes.GZIP
                   if example_files and example_files[0].endswith(".gz")
                   else beam.io.filesystem.CompressionTypes.AUTO)
    with beam.Pipeline(options=PipelineOptions(beam_pipeline_args or [])) as pipeline:
        _ = (pipeline
             | "Files" >> beam.Create(example_files)
             | "Read" >> beam.io.ReadAllFromTFRecord(compression_type=compression)
             | "Batch" >> beam.BatchElements(min_batch_size=BATCH_SIZE,
                                             max_batch_size=BATCH_SIZE)
             | "Compare" >> beam.ParDo(CompareFn(job))
             | "PerEndpoint" >> beam.CombinePerKey(_merge_all)
             | "Rows" >> beam.Map(lambda kv: json.dumps(kv[1].to_row()))
             | "Write" >> beam.io.WriteToText(output_path, shard_name_template=""))
    with tf.io.gfile.GFile(output_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["endpoint"])


def _merge_all(stats: Iterable[ParityStats]) -> ParityStats:
    stats = list(stats)
    merged = stats[0]
    for s in stats[1:]:
        merged = merged.merge(s)
    return merged
