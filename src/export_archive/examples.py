"""`kind: tf_example` endpoints: serialized tf.Examples in, the model's outputs out.

The one input is ``string[?]``, the only Predict input InfraValidator can build
requests for. The feature spec comes from a Transform graph (its raw feature
spec) or a Schema; ``exclude_features`` drops label columns; ``transform: true``
applies the Transform graph, whose layer is attached to the saved object so its
tables and vocabulary assets are saved with the model. Parsed features are
matched to the model's inputs by name and adapted (sparse to dense, ``[?]`` to
``[?,1]``, dtype cast).

``method: classify`` / ``regress`` produce the input and output keys TF
Serving's Classify and Regress APIs require (``inputs``; ``scores`` /
``outputs``); the writer then sets the signature's method name, which Keras
`ExportArchive` cannot.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from export_archive.config import KIND_RAW_FEATURES, ConfigError, EndpointConfig, InputError
from export_archive.constants import METHOD_NAMES
from export_archive.sources import ModelSource, error_summary

# Method names and keys from tensorflow/python/saved_model/signature_constants.py,
# the contract of TF Serving's Classify / Regress / Predict APIs.
PREDICT_INPUT_KEY = "examples"
CLASSIFY_REGRESS_INPUT_KEY = "inputs"
CLASSIFY_SCORES_KEY = "scores"
CLASSIFY_CLASSES_KEY = "classes"
REGRESS_OUTPUTS_KEY = "outputs"
TRANSFORM_ATTRIBUTE = "transform_features_layer"
SCHEMA_FILE = "schema.pbtxt"


def load_schema(path: str):
    """Reads a Schema proto from a SchemaGen artifact dir or a .pbtxt file."""
    # The 'transform' extra's packages: imported only for tf_example endpoints.
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    file_path = os.path.join(path, SCHEMA_FILE) if tf.io.gfile.isdir(path) else path
    if not tf.io.gfile.exists(file_path):
        raise FileNotFoundError(f"No schema at {path}: expected a SchemaGen artifact "
                                f"directory holding {SCHEMA_FILE}, or a .pbtxt file.")
    with tf.io.gfile.GFile(file_path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


class ExamplesError(InputError):
    """The tf.Example records given for the check (`--examples`) cannot be read."""

    subject = "examples input"


def read_records(files: List[str], count: int) -> List[bytes]:
    """The first `count` records of TFRecord `files` (gzip by suffix, as ExampleGen
    writes them), repeated to fill `count` when there are fewer; [] without files."""
    if not files:
        return []
    compression = "GZIP" if files[0].endswith(".gz") else None
    try:
        records = [r.numpy() for r in tf.data.TFRecordDataset(
            files, compression_type=compression).take(count)]
    except tf.errors.OpError as e:
        raise ExamplesError(
            files[0] if len(files) == 1 else f"{len(files)} files from {files[0]}",
            f"do not read as TFRecord files of tf.Examples ({type(e).__name__}: "
            f"{error_summary(e)})", allowed="TFRecord files (gzip-compressed when named "
            "*.gz) as ExampleGen writes them", fix="give an ExampleGen Examples artifact "
            "directory, or a glob matching only its record files") from None
    return (records * (count // len(records) + 1))[:count] if records else []


def find_example_files(path: str) -> List[str]:
    """tf.Example TFRecord files from a glob, a directory, or an Examples artifact
    directory (its Split-eval preferred, else Split-train)."""
    if not tf.io.gfile.isdir(path):
        return sorted(tf.io.gfile.glob(path))
    for split in ("Split-eval", "Split-train"):
        if tf.io.gfile.isdir(os.path.join(path, split)):
            path = os.path.join(path, split)
            break
    return sorted(os.path.join(path, f) for f in tf.io.gfile.listdir(path)
                  if not tf.io.gfile.isdir(os.path.join(path, f)))


def synthesize_examples(feature_spec: Dict[str, Any], batch: int, rng) -> List[bytes]:
    """Serialized tf.Examples with a value of the right type for every feature."""
    out = []
    for _ in range(batch):
        feature = {}
        for name, spec in feature_spec.items():
            size = int(np.prod(spec.shape)) if getattr(spec, "shape", None) else 1
            if spec.dtype == tf.string:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"] * size))
            elif spec.dtype.is_floating:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
                    value=rng.normal(size=size).tolist()))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * size))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
    return out


class ExampleEndpointBuilder:
    """Builds tf_example endpoints from a Schema and/or a Transform graph."""

    def __init__(self, schema_path: Optional[str] = None,
                 transform_graph_path: Optional[str] = None,
                 example_files: Optional[List[str]] = None):
        if not schema_path and not transform_graph_path:
            raise ValueError("A tf_example endpoint needs a schema or a transform graph.")
        self.schema_path, self.transform_graph_path = schema_path, transform_graph_path
        self.example_files = list(example_files or [])
        self._tft_output = None
        self._transform_layer = None
        # Filled while endpoints are built, read by the writer: objects to save as
        # children of the SavedModel root, and signature method names to set.
        self.trackables: Dict[str, Any] = {}
        self.method_names: Dict[str, str] = {}

    @property
    def tft_output(self):
        if self._tft_output is None and self.transform_graph_path:
            import tensorflow_transform as tft   # the 'transform' extra: only when used
            self._tft_output = tft.TFTransformOutput(self.transform_graph_path)
        return self._tft_output

    def raw_feature_spec(self) -> Dict[str, Any]:
        if self.tft_output is not None:
            return dict(self.tft_output.raw_feature_spec())
        from tensorflow_transform.tf_metadata import schema_utils   # as tft above
        return dict(schema_utils.schema_as_feature_spec(
            load_schema(self.schema_path)).feature_spec)

    def example_source(self, count: int) -> List[bytes]:
        """`count` serialized tf.Examples for the serving check and warmup: real
        records from `example_files` when given, else synthesized from the spec."""
        records = read_records(self.example_files, count)
        if records:
            return records
        return synthesize_examples(self.raw_feature_spec(), count, np.random.default_rng(0))

    def transform_layer(self):
        """One Transform layer for every endpoint: its tables and assets saved once."""
        if self._transform_layer is None:
            self._transform_layer = self.tft_output.transform_features_layer()
            self.trackables[TRANSFORM_ATTRIBUTE] = self._transform_layer
        return self._transform_layer

    def __call__(self, endpoint: EndpointConfig, source: ModelSource, where: str):
        feature_spec = self.raw_feature_spec()
        missing = [f for f in endpoint.exclude_features if f not in feature_spec]
        if missing:
            raise ConfigError(f"{where}.exclude_features", "names features the schema does "
                              "not have", missing, ", ".join(sorted(feature_spec)),
                              "list only raw feature names")
        for name in endpoint.exclude_features:
            feature_spec.pop(name)
        transform_layer = None
        if endpoint.transform:
            if self.tft_output is None:
                raise ConfigError(f"{where}.transform", "transform: true needs the Transform "
                                  "graph", True, "a transform_graph input",
                                  "pass the Transform component's transform_graph")
            transform_layer = self.transform_layer()
        model_fn = source.call_fn(training=False, where=where)
        model_inputs = source.infer_input_signature(where)
        reads = _InputsRead(model_fn, model_inputs)
        feature_origin = ("Transform output" if transform_layer is not None
                          else "raw feature (Schema)")
        classes = self._classes(endpoint, where)

        def serve_features(features):
            if transform_layer is not None:
                features = transform_layer(features)
            args = _match_inputs(features, model_inputs, where, reads, feature_origin)
            return _shape_outputs(model_fn(*args), endpoint, where, classes)

        if endpoint.kind == KIND_RAW_FEATURES:
            return _raw_features_endpoint(feature_spec, serve_features, where)
        method = endpoint.method
        if method != "predict":
            self.method_names[endpoint.name] = METHOD_NAMES[method]
        input_key = PREDICT_INPUT_KEY if method == "predict" else CLASSIFY_REGRESS_INPUT_KEY

        def serve_tf_examples(serialized):
            return serve_features(tf.io.parse_example(serialized, feature_spec))
        return serve_tf_examples, [tf.TensorSpec([None], tf.string, name=input_key)]

    def _classes(self, endpoint: EndpointConfig, where: str) -> Optional[List[str]]:
        vocabulary = endpoint.classes_vocabulary
        if vocabulary is None:
            return list(endpoint.classes) if endpoint.classes is not None else None
        path = f"{where}.classes.vocabulary"
        if self.tft_output is None:
            raise ConfigError(path, "classes from a vocabulary need the Transform graph",
                              vocabulary, "a transform_graph input",
                              "pass the Transform component's transform_graph, or list "
                              "the classes")
        try:
            values = self.tft_output.vocabulary_by_name(vocabulary)
        except (ValueError, OSError, tf.errors.OpError):
            assets = os.path.join(self.transform_graph_path, "transform_fn", "assets")
            found = sorted(tf.io.gfile.listdir(assets)) if tf.io.gfile.isdir(assets) else []
            raise ConfigError(path, "the Transform graph has no such vocabulary", vocabulary,
                              ", ".join(found) or "(it has no vocabularies)",
                              "name a vocabulary the preprocessing_fn writes (its "
                              "vocab_filename)") from None
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def raw_input_spec(name: str, spec) -> tf.TensorSpec:
    """The named input a raw feature gets: what TF Serving's REST API builds from
    one value per instance (row format) for that feature."""
    if isinstance(spec, tf.io.FixedLenFeature):
        # One value per example ([] or [1], as SchemaGen infers it) is a scalar per
        # instance, so a client sends {"age": 42}, not {"age": [42]}.
        shape = [] if list(spec.shape) in ([], [1]) else list(spec.shape)
        return tf.TensorSpec([None] + shape, spec.dtype, name=name)
    if isinstance(spec, tf.io.VarLenFeature):
        # A REST request stacks equal-length lists only: [batch, width].
        return tf.TensorSpec([None, None], spec.dtype, name=name)
    raise ConfigError(name, f"raw feature {name!r} is a {type(spec).__name__}, which has no "
                      "dense request form", type(spec).__name__,
                      "FixedLenFeature or VarLenFeature raw features",
                      'serve it through a "kind": "tf_example" endpoint')


def _raw_features_endpoint(feature_spec, serve_features, where):
    try:
        specs = {name: raw_input_spec(name, spec) for name, spec in sorted(feature_spec.items())}
    except ConfigError as e:
        raise ConfigError(f"{where}.kind", e.problem, e.received, e.allowed, e.fix) from None
    var_len = {n for n, s in feature_spec.items() if isinstance(s, tf.io.VarLenFeature)}
    single = {n for n, s in feature_spec.items()
              if isinstance(s, tf.io.FixedLenFeature) and list(s.shape) == [1]}

    def serve_raw_features(features):
        # Each feature reaches Transform in the form tf.io.parse_example gives it:
        # VarLen as a SparseTensor (every value a client sent is present), shape-[1]
        # features as [batch, 1].
        features = {name: (tf.RaggedTensor.from_tensor(value).to_sparse() if name in var_len
                           else value[:, tf.newaxis] if name in single else value)
                    for name, value in features.items()}
        return serve_features(features)
    return serve_raw_features, [specs]


def _input_name(spec) -> Optional[str]:
    name = getattr(spec, "name", None)
    return name.split(":")[0] if name else None


def _match_inputs(features: Dict[str, Any], model_inputs: List[Any], where: str,
                  reads: Optional["_InputsRead"] = None,
                  feature_origin: str = "feature"):
    available = sorted(features)
    leaf_index = {}

    def pick(spec, key):
        if key not in features:
            raise ConfigError(f"{where}", f"the model input {key!r} is not among the "
                              "parsed features", key, "features: " + ", ".join(available),
                              "match the model's input names to the feature names (or "
                              "to the Transform outputs with transform: true)")
        feature = features[key]
        if not convertible(feature.dtype, spec.dtype):
            index = leaf_index[id(spec)]
            if reads is not None and not reads(index):
                # The hand-written pattern passes this feature to model(...), Keras adds a
                # Cast that cannot run, and TF prunes it because no output depends on it.
                # We give the unread input a zero tensor of its declared dtype instead, so
                # the served graph holds no impossible cast at all; the answers are equal.
                return _unread_placeholder(feature, spec)
            raise ConfigError(
                f"{where}", f"the model reads input {key!r} as {spec.dtype.name}, but the "
                f"{feature_origin} {key!r} is {feature.dtype.name}, and TensorFlow has no "
                f"cast from {feature.dtype.name} to {spec.dtype.name}",
                f"{key}: {feature.dtype.name}", f"a {spec.dtype.name} feature, or an input "
                f"declared {feature.dtype.name}",
                f"change the {feature_origin} {key!r} to produce {spec.dtype.name} (e.g. "
                "tft.compute_and_apply_vocabulary or tf.strings.to_number in the "
                "preprocessing_fn), or declare the Keras Input with "
                f"dtype={feature.dtype.name!r}")
        return adapt(feature, spec, key)

    def match(node, key=None):
        if isinstance(node, dict):
            return {k: match(v, k) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [match(v) for v in node]
        return pick(node, key or _input_name(node))

    leaves = list(_leaves(model_inputs))
    names = [(k or _input_name(s)) for k, s in leaves]
    if None in names:
        raise ConfigError(where, "the model has unnamed inputs, so tf.Example features "
                          "cannot be matched to them", names, "named Keras Inputs",
                          "name the model's inputs after the features")
    # Indexed in tf.nest's flat order (sorted dict keys), as `inputs_read` reports.
    leaf_index.update({id(s): i for i, s in enumerate(tf.nest.flatten(model_inputs))})
    return [match(arg) for arg in model_inputs]


def convertible(from_dtype, to_dtype) -> bool:
    """Whether `tf.cast` can turn one dtype into the other (never to or from string)."""
    return from_dtype == to_dtype or tf.string not in (from_dtype, to_dtype)


def _unread_placeholder(feature, spec: tf.TensorSpec):
    batch = tf.shape(feature, out_type=tf.int32)[0]
    dims = [batch] + [1 if d is None else d for d in spec.shape.as_list()[1:]] \
        if spec.shape.rank else []
    return tf.zeros(tf.stack(dims) if dims else [], dtype=spec.dtype)


class _InputsRead:
    """Which model inputs the served graph reads: ``reads(i)`` for the i-th flat input.

    Traced once, lazily (only when a feature cannot be converted to its input's
    dtype), from the model's own input signature. An input is read when an output
    or a stateful op depends on it: the same rule by which TF's function runtime
    prunes a graph before it runs, so "read" means "would run in TF Serving".
    """

    def __init__(self, model_fn, model_inputs):
        self.model_fn, self.model_inputs = model_fn, model_inputs
        self._read: Optional[List[bool]] = None

    # Plain Python even inside an autograph-converted endpoint (tf_keras traces with
    # autograph): this walks graph protos, it builds no ops.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, index: int) -> bool:
        if self._read is None:
            # Called while the endpoint itself is being traced: step out to eager
            # to trace the probe as a function of its own.
            with tf.init_scope():
                self._read = inputs_read(self.model_fn, self.model_inputs)
        return self._read[index]


@tf.autograph.experimental.do_not_convert
def inputs_read(fn, input_signature: List[Any]) -> List[bool]:
    """For each flat input of ``fn(*input_signature)``: does an output depend on it?"""
    flat_specs = tf.nest.flatten(input_signature)

    def flat_fn(*flat):   # one positional argument per flat input: placeholders in order
        return fn(*tf.nest.pack_sequence_as(input_signature, list(flat)))

    concrete = tf.function(flat_fn, autograph=False).get_concrete_function(*flat_specs)
    graph = concrete.graph
    placeholders = concrete.inputs[:len(flat_specs)]
    # TF's function runtime (PruneFunctionBody) keeps what outputs and stateful
    # ops depend on, and drops the rest before running: the same seeds here.
    stateful = [op for op in graph.get_operations()
                if op.type != "Placeholder" and op.op_def.is_stateful]
    reached = _reached_ops(graph, [t.op for t in concrete.outputs]
                           + list(graph.control_outputs) + stateful)
    return [p.op.name in reached for p in placeholders]


_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


def _reached_ops(graph, seeds) -> set:
    """Names of the ops `seeds` depend on. Through a function call (a restored
    SavedModel's call is one), only the arguments the function's body reads."""
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    memo: Dict[str, List[bool]] = {}
    reached, stack = set(), list(seeds)
    while stack:
        op = stack.pop()
        if op.name in reached:
            continue
        reached.add(op.name)
        stack.extend(op.control_inputs)
        callee = _callee(op.type, lambda: op.get_attr("f").name, library)
        used = _args_read(library, callee, memo) if callee else None
        stack.extend(t.op for i, t in enumerate(op.inputs) if used is None or used[i])
    return reached


def _callee(op_type: str, function_name, library) -> Optional[str]:
    if op_type in _CALL_OPS:
        name = function_name()
        return name if name in library else None
    return op_type if op_type in library else None   # a direct call of a library function


def _args_read(library, name: str, memo: Dict[str, List[bool]]) -> List[bool]:
    """Per argument of library function `name`: does a return value (or a stateful
    op, which TF never prunes) depend on it?"""
    if name in memo:
        return memo[name]
    memo[name] = [True] * len(library[name].signature.input_arg)  # recursion: assume read
    fdef = library[name]
    nodes = {n.name: n for n in fdef.node_def}
    stack = list(fdef.ret.values()) + list(fdef.control_ret.values())
    stack += [n.name for n in fdef.node_def if _is_stateful(n.op)]
    seen = set()
    while stack:
        node_name = stack.pop().lstrip("^").split(":")[0]
        if node_name in seen:
            continue
        seen.add(node_name)
        node = nodes.get(node_name)
        if node is None:
            continue   # a function argument
        inputs = list(node.input)
        callee = _callee(node.op, lambda: node.attr["f"].func.name, library)
        if callee:
            data = [i for i in inputs if not i.startswith("^")]
            used = _args_read(library, callee, memo)
            inputs = [i for i, u in zip(data, used) if u] + [
                i for i in inputs if i.startswith("^")]
        stack.extend(inputs)
    memo[name] = [a.name in seen for a in fdef.signature.input_arg]
    return memo[name]


def _is_stateful(op_type: str) -> bool:
    op_def = op_def_registry.get(op_type)
    return bool(op_def and op_def.is_stateful)


def _leaves(structure, key=None):
    if isinstance(structure, dict):
        for k, v in structure.items():
            yield from _leaves(v, k)
    elif isinstance(structure, (list, tuple)):
        for v in structure:
            yield from _leaves(v)
    else:
        yield key, structure


def adapt(tensor, spec: tf.TensorSpec, name: str = ""):
    """Fits a parsed feature to a model input: densify, add/drop a trailing 1, cast."""
    if isinstance(tensor, (tf.SparseTensor, tf.RaggedTensor)):
        # Densify to the width the model expects: a batch in which no example has an
        # optional (VarLen) feature would otherwise densify to width 0 and fail.
        if isinstance(tensor, tf.RaggedTensor):
            tensor = tensor.to_sparse()
        width = _dense_width(tensor, spec)
        if width is not None:
            tensor = tf.sparse.reset_shape(tensor, tf.stack(
                [tf.shape(tensor, out_type=tf.int64)[0], tf.constant(width, tf.int64)]))
        tensor = tf.sparse.to_dense(tensor)
        if width is not None:
            tensor = tf.ensure_shape(tensor, [None, width])
    rank = spec.shape.rank
    if rank is not None and tensor.shape.rank is not None:
        if rank == tensor.shape.rank + 1 and spec.shape[-1] == 1:
            tensor = tf.expand_dims(tensor, -1)   # [?] feature -> [?,1] input
        elif rank == tensor.shape.rank - 1 and tensor.shape[-1] == 1:
            tensor = tf.squeeze(tensor, -1)
    if tensor.dtype != spec.dtype:
        if not convertible(tensor.dtype, spec.dtype):
            raise ConfigError(name or "input", f"feature {name!r} is {tensor.dtype.name} but "
                              f"the model input is {spec.dtype.name}, and TensorFlow has no "
                              "cast between them", f"{name}: {tensor.dtype.name}",
                              f"a {spec.dtype.name} feature",
                              f"produce {spec.dtype.name} for {name!r} in the "
                              "preprocessing_fn, or change the input's dtype")
        tensor = tf.cast(tensor, spec.dtype)
    return tensor


def _dense_width(tensor, spec: tf.TensorSpec) -> Optional[int]:
    """The static last dim a rank-2 sparse/ragged feature must densify to, if known."""
    if tensor.shape.rank != 2 or spec.shape.rank is None:
        return None
    if spec.shape.rank == 2:
        return spec.shape[-1]          # None when the model input is itself variable-width
    if spec.shape.rank == 1:
        return 1                       # then squeezed to the rank-1 input below
    return None


def _shape_outputs(outputs, endpoint: EndpointConfig, where: str,
                   classes: Optional[List[str]] = None):
    method = endpoint.method
    if method == "predict":
        return outputs
    flat = tf.nest.flatten(outputs)
    if len(flat) != 1:
        raise ConfigError(f"{where}.method", f"{method} needs a model with one output "
                          f"tensor; it has {len(flat)}", method, "predict for multi-output "
                          "models", 'use "method": "predict"')
    tensor = tf.cast(flat[0], tf.float32)
    if method == "regress":
        return {REGRESS_OUTPUTS_KEY: tensor}
    return _classify_outputs(tensor, endpoint, where, classes)


def _classify_outputs(scores, endpoint: EndpointConfig, where: str,
                      classes: Optional[List[str]]):
    """TF Serving's Classify contract: `scores` float [batch, num_classes] and,
    optionally, `classes` string [batch, num_classes] (one label per score column)."""
    if scores.shape.rank == 1:
        scores = scores[:, tf.newaxis]
    if endpoint.score_activation == "softmax":
        scores = tf.nn.softmax(scores, axis=-1)
    elif endpoint.score_activation == "sigmoid":
        scores = tf.sigmoid(scores)
    width = scores.shape[-1]
    if classes is not None and width == 1 and len(classes) == 2:
        # One probability p of the second class, as a binary model emits it: the
        # two classes' scores are 1 - p and p.
        scores = tf.concat([1.0 - scores, scores], axis=-1)
        width = 2
    outputs = {CLASSIFY_SCORES_KEY: scores}
    if classes is not None:
        if width is not None and width != len(classes):
            raise ConfigError(f"{where}.classes", f"the model gives {width} score(s) per "
                              f"example but {len(classes)} class(es) were given",
                              list(classes), f"{width} classes (or 2 for one sigmoid "
                              "output)", "list one class per output column, in order")
        labels = tf.constant(classes, dtype=tf.string)
        outputs[CLASSIFY_CLASSES_KEY] = tf.tile(labels[tf.newaxis, :],
                                                tf.stack([tf.shape(scores)[0], 1]))
    return outputs
