"""Endpoint builders: one `EndpointConfig` + a `ModelSource` -> (function, input signature).

The result is exactly what `ExportArchive.add_endpoint(name, fn, input_signature)`
takes. Kinds other than plain features (``tf_example``, ``raw_features``) are built by
`export_archive.examples`, which needs a feature spec from outside the model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

import tensorflow as tf
from google.protobuf import message, text_format

from export_archive.config import SPEC_KINDS, ConfigError, EndpointConfig, InputError, SpecLeaf
from export_archive.sources import (ModelSource, call_user_function, error_summary,
                                    import_user_module)
from export_archive.tracking import trackables


def leaf_to_tensor_spec(leaf: SpecLeaf, name: Optional[str] = None) -> tf.TensorSpec:
    return tf.TensorSpec(shape=leaf.shape, dtype=tf.as_dtype(leaf.dtype), name=name)


def signature_to_tensor_specs(signature) -> List[Any]:
    """Config signature (nested SpecLeaf) -> nested `tf.TensorSpec`, dict keys as names."""
    def convert(node, name=None):
        if isinstance(node, list):
            return [convert(n) for n in node]
        if isinstance(node, dict):
            return {k: convert(v, k) for k, v in node.items()}
        return leaf_to_tensor_spec(node, name)
    return [convert(s) for s in signature]


def tensor_spec_to_leaf(spec: tf.TensorSpec) -> SpecLeaf:
    dims = tuple(None if d is None else int(d) for d in spec.shape.as_list()) \
        if spec.shape.rank is not None else ()
    return SpecLeaf(spec.dtype.name, dims)


def build(endpoint: EndpointConfig, source: ModelSource, where: str,
          example_builder: Optional[Callable] = None
          ) -> Tuple[Callable, List[Any], List[Any]]:
    """Returns ``(fn, input_signature, resources)`` for one endpoint: `resources` are
    the objects a factory returned beside its function, for the archive to track."""
    resources: List[Any] = []
    if endpoint.kind in SPEC_KINDS:
        if example_builder is None:
            raise ConfigError(f"{where}.kind", f"a {endpoint.kind} endpoint needs a feature "
                              "spec: give a Schema or a Transform graph", endpoint.kind,
                              "a schema (--schema / schema=) or transform graph "
                              "(--transform-graph / transform_graph=)",
                              "pass the Schema or TransformGraph artifact to the exporter")
        fn, signature = _spec_endpoint(example_builder, endpoint, source, where)
    elif endpoint.is_call:
        fn = source.call_fn(endpoint.training, where)
        if endpoint.input_signature is not None:
            expected = _model_inputs(source)
            signature = _named_like_model(
                signature_to_tensor_specs(endpoint.input_signature), expected)
            _refuse_unconvertible_dtypes(signature, expected, f"{where}.input_signature")
            fn = _refusing_unrunnable_signature(fn, signature, expected,
                                                f"{where}.input_signature")
        else:
            signature = source.infer_input_signature(where)
    elif endpoint.signature_name is not None:
        fn, signature = _signature_endpoint(endpoint, source, where)
    else:
        fn, signature, resources = _factory_endpoint(endpoint, source, where)
    if endpoint.output_keys is not None:
        fn = _with_output_keys(fn, endpoint.output_keys, where)
    if endpoint.input_keys is not None:
        signature = _with_input_keys(signature, endpoint.input_keys, where)
    return fn, signature, resources


class FeatureSpecError(InputError):
    """The Schema or Transform graph given for tf_example / raw_features endpoints
    cannot be read."""

    subject = "feature spec input"


def _spec_endpoint(example_builder, endpoint, source, where):
    """Builds a tf_example / raw_features endpoint, blaming an unreadable Schema or
    Transform graph on the path the user gave, not on this program."""
    # The builder reads the Schema / Transform graph lazily; read it here, first,
    # so the errors below can only come from those files.
    try:
        example_builder.raw_feature_spec()
    except InputError:
        raise
    except (text_format.ParseError, message.DecodeError, OSError, ValueError, KeyError,
            tf.errors.OpError) as e:
        transform = getattr(example_builder, "transform_graph_path", None)
        path = transform or getattr(example_builder, "schema_path", None) or "?"
        what = ("a Transform graph (a Transform artifact directory with "
                "transform_fn/ and transformed_metadata/)" if transform else
                "a Schema (a SchemaGen artifact directory holding schema.pbtxt, or a "
                ".pbtxt file)")
        raise FeatureSpecError(
            path, f"cannot be read as {what.split(' (')[0]} ({type(e).__name__}: "
            f"{error_summary(e)})", allowed=what,
            fix="give the TFX artifact's directory as --transform-graph / --schema "
                "(transform_graph= / schema= in Python), or regenerate it") from None
    return example_builder(endpoint, source, where)


def _model_inputs(source: ModelSource) -> Optional[List[Any]]:
    """The model's own input signature, or None where it cannot be known (e.g. a
    subclassed model never called): then only tracing can judge a given one."""
    try:
        return source.infer_input_signature("")
    except ConfigError:
        return None


def _named_like_model(signature, inferred: Optional[List[Any]]):
    """Unnamed single-tensor arguments of a config's input_signature take the names of
    the model's Inputs at the same positions (else TF names them args_0, args_1, ...)."""
    if inferred is None or not any(isinstance(s, tf.TensorSpec) and s.name is None
                                   for s in signature):
        return signature
    named = []
    for i, spec in enumerate(signature):
        model_spec = inferred[i] if i < len(inferred) else None
        if (isinstance(spec, tf.TensorSpec) and spec.name is None
                and isinstance(model_spec, tf.TensorSpec) and model_spec.name):
            spec = tf.TensorSpec(spec.shape, spec.dtype, name=model_spec.name)
        named.append(spec)
    return named


def _spec_text(specs) -> str:
    """A signature as the config writes it: ["float32[?,3]", {"x": "int64[?]"}]."""
    def text(node):
        if isinstance(node, (list, tuple)):
            return "[" + ", ".join(text(n) for n in node) + "]"
        if isinstance(node, dict):
            return "{" + ", ".join(f'"{k}": {text(v)}' for k, v in node.items()) + "}"
        if isinstance(node, tf.TensorSpec):
            return f'"{tensor_spec_to_leaf(node)}"'
        return type(node).__name__
    return text(list(specs))


def _refuse_unconvertible_dtypes(given, expected, path: str) -> None:
    """Refuses a string tensor for a numeric model input, or the reverse.

    Keras casts an input to its Input's dtype inside the graph, so such a
    signature traces and exports, and every request then fails with "Cast string
    to float is not supported". Numeric-to-numeric casts run, so they pass.
    """
    if expected is None:
        return
    try:
        tf.nest.assert_same_structure(list(given), list(expected), check_types=False)
    except (TypeError, ValueError):
        return   # a structure mismatch: tracing reports it (_refusing_unrunnable_signature)
    for got, want in zip(tf.nest.flatten(list(given)), tf.nest.flatten(list(expected))):
        if not (isinstance(got, tf.TensorSpec) and isinstance(want, tf.TensorSpec)):
            continue
        if (got.dtype == tf.string) != (want.dtype == tf.string):
            name = f" {want.name!r}" if want.name else ""
            raise ConfigError(
                path, f"the model's input{name} is {want.dtype.name}, and a "
                f"{got.dtype.name} tensor cannot be converted to it (TensorFlow has no "
                f"cast between strings and numbers, so every request would fail)",
                _spec_text(given), f"the model's inputs: {_spec_text(expected)}",
                "give the model's dtype, or omit input_signature to use the model's own "
                "(for serialized tf.Examples use \"kind\": \"tf_example\")")


def _refusing_unrunnable_signature(fn, given, expected, path: str):
    """`fn`, raising a `ConfigError` when the model refuses `given` while traced.

    The archive traces each endpoint with its signature; the model's own error
    ("multiple values for argument 'training'", "expected shape=(None, 3)") names
    neither the config field nor the model's inputs. Only errors of the call itself
    (TypeError/ValueError while tracing) are translated; anything else propagates.
    """
    def explained(*args):
        try:
            return fn(*args)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            count = ""
            if expected is not None and len(given) != len(expected):
                count = (f"input_signature lists {len(given)} argument(s) but the model "
                         f"takes {len(expected)}; ")
            raise ConfigError(
                path, f"the model cannot be called with this input signature ({count}the "
                f"model said: {error_summary(e)})", _spec_text(given),
                f"the model's inputs: {_spec_text(expected)}" if expected is not None
                else "the inputs the model was built for (number of arguments, rank, "
                "sizes, dtypes)",
                "match the model's inputs, or omit input_signature to use the model's "
                "own") from None
    return explained


def _with_input_keys(signature, keys, where):
    """Names each single-tensor argument: TF Serving keys a signature input (and REST
    `instances` entries) by its TensorSpec name."""
    if len(keys) != len(signature) or not all(isinstance(s, tf.TensorSpec) for s in signature):
        shapes = [type(s).__name__ if not isinstance(s, tf.TensorSpec) else "tensor"
                  for s in signature]
        raise ConfigError(f"{where}.input_keys", f"the endpoint takes {len(signature)} "
                          f"argument(s) ({', '.join(shapes)}) but {len(keys)} input key(s) "
                          "were given", list(keys), "one key per single-tensor argument "
                          "(a dict argument is keyed by its own keys)",
                          "list one name per argument, or omit input_keys")
    return [tf.TensorSpec(s.shape, s.dtype, name=k) for s, k in zip(signature, keys)]


def _signature_endpoint(endpoint, source, where):
    concrete = source.signature(endpoint.signature_name, where)
    # Signature functions take keyword arguments only; the endpoint takes them as one dict.
    specs = dict(concrete.structured_input_signature[1])
    if endpoint.input_signature is not None:
        given = signature_to_tensor_specs(endpoint.input_signature)
        if len(given) != 1 or not isinstance(given[0], dict) or set(given[0]) != set(specs):
            raise ConfigError(f"{where}.input_signature", "a signature endpoint takes one "
                              "object of the signature's inputs", [str(g) for g in given],
                              "{" + ", ".join(f'"{k}": ...' for k in specs) + "}",
                              "omit input_signature to use the signature's own")
        _refuse_unlike_signature(given[0], specs, f"{where}.input_signature[0]")
        specs = given[0]
    return (lambda inputs: concrete(**inputs)), [specs]


def _refuse_unlike_signature(given, specs, path: str) -> None:
    """Refuses a `signature:NAME` input spec the signature cannot take: another dtype,
    rank or size (TF's own words: "Binding inputs to tf.function failed")."""
    for key, spec in given.items():
        want = specs[key]
        if not isinstance(spec, tf.TensorSpec) or not isinstance(want, tf.TensorSpec):
            continue
        same_rank = spec.shape.rank == want.shape.rank
        if spec.dtype != want.dtype or not same_rank or not \
                want.shape.is_compatible_with(spec.shape):
            raise ConfigError(
                f"{path}.{key}", f"the signature's input {key!r} is "
                f"{tensor_spec_to_leaf(want)}, which this spec does not match (dtype, "
                "rank and known sizes must agree)", str(tensor_spec_to_leaf(spec)),
                "{" + ", ".join(f'"{k}": "{tensor_spec_to_leaf(v)}"' for k, v in specs.items()
                                if isinstance(v, tf.TensorSpec)) + "}",
                "give the signature's own specs (or narrower sizes), or omit "
                "input_signature to use the signature's own")


def _factory_endpoint(endpoint, source, where):
    module_name, attr = endpoint.factory
    path = f"{where}.fn"
    module = import_user_module(module_name, path, endpoint.fn)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(path, f"module {module_name!r} has no callable {attr!r}",
                          endpoint.fn, "a function taking the model",
                          f"define `def {attr}(model): ...` in {module_name}")
    made = call_user_function(factory, source.obj, path, endpoint.fn, "factory",
                              "a factory that takes the model and returns a function")
    made, signature, resources = _unpack_factory_result(made, path)
    if not callable(made):
        raise ConfigError(path, "the factory did not return a function", type(made).__name__,
                          FACTORY_RESULTS, "return the serving function from the factory")
    if endpoint.input_signature is not None:
        signature = signature_to_tensor_specs(endpoint.input_signature)
    if signature is None:
        signature = _traced_signature(made)
    if signature is None:
        raise ConfigError(f"{where}.input_signature", "the factory's function has no known "
                          "input signature", endpoint.fn,
                          "a traced tf.function, one with input_signature, or "
                          "(callable, input_signature)", "give input_signature in the config")
    # A tf.function passed with a signature would be wrapped again; use its Python function.
    python_fn = getattr(made, "python_function", made)
    return _explaining_trace_errors(python_fn, endpoint.fn, path), list(signature), resources


FACTORY_RESULTS = ("a tf.function, (callable, input_signature), (callable, input_signature, "
                   "resources) or {\"fn\": callable, \"input_signature\": ..., \"track\": "
                   "resources}")
FACTORY_KEYS = ("fn", "input_signature", "track")


def _unpack_factory_result(made, path: str):
    """(fn, input_signature or None, resources to track) from what a factory returned."""
    resources = None
    if isinstance(made, dict):
        unknown = sorted(set(made) - set(FACTORY_KEYS))
        if unknown or "fn" not in made:
            raise ConfigError(path, "the factory returned a dict "
                              + (f"with unknown keys {unknown}" if unknown else "without \"fn\""),
                              sorted(made), FACTORY_RESULTS,
                              'return {"fn": serving_fn, "track": [table, ...]}')
        made, signature, resources = (made["fn"], made.get("input_signature"),
                                      made.get("track"))
    elif isinstance(made, tuple) and len(made) in (2, 3):
        made, signature, resources = (made + (None,))[:3]
    else:
        signature = None
    resources = [] if resources is None else trackables(
        resources, path, "a resource the factory returned to track")
    return made, signature, resources


def _explaining_trace_errors(fn, factory: str, path: str):
    """The factory's function, raising a `ConfigError` when it fails while the
    archive traces it: the user's function failing is not an internal error."""
    @functools.wraps(fn)   # TF names signature inputs after fn's parameters
    def explained(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            raise ConfigError(path, f"the function made by {factory} failed while traced "
                              f"with its input signature ({type(e).__name__}: "
                              f"{error_summary(e)})", factory,
                              "a function that traces with the endpoint's input signature",
                              "fix the function, or give the input_signature it expects "
                              "(call it under tf.function in Python to see the "
                              "traceback)") from None
    return explained


def _traced_signature(fn) -> Optional[List[Any]]:
    if getattr(fn, "input_signature", None) is not None:
        return list(fn.input_signature)
    # `_list_all_concrete_functions` is how ExportArchive itself finds the trace of
    # a tf.function that was "called at least once" (the reference's contract).
    lister = getattr(fn, "_list_all_concrete_functions", None)
    traces = lister() if lister else []
    if traces:
        # A function traced once on a sample batch has that batch size baked in;
        # a serving endpoint must accept any batch, so the leading dim is relaxed.
        return tf.nest.map_structure(_relax_batch_dim,
                                     list(traces[0].structured_input_signature[0]))
    return None


def _relax_batch_dim(spec):
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank:
        return tf.TensorSpec([None] + spec.shape.as_list()[1:], spec.dtype, spec.name)
    return spec


def name_outputs(outputs, names: Optional[List[str]]):
    """The model's outputs keyed by its own output names (a dict output as it is)."""
    if names is None or isinstance(outputs, dict):
        return outputs
    flat = tf.nest.flatten(outputs)
    return dict(zip(names, flat)) if len(flat) == len(names) else outputs


def default_output_names(endpoint: EndpointConfig, source: ModelSource
                         ) -> Optional[List[str]]:
    """The signature output keys an endpoint gets when the config names none: the
    model's own output names, for endpoints that return what the model returns."""
    if endpoint.output_keys is not None:
        return None
    if endpoint.is_call and endpoint.kind == "features" or (
            endpoint.kind in SPEC_KINDS and endpoint.method == "predict"):
        return source.output_names()
    return None


def named_signature(concrete, names: List[str]):
    """A signature function returning `concrete`'s outputs keyed by `names`.

    Only the SavedModel *signature* (what TF Serving and its clients see) is named:
    the endpoint's own method on the reloaded object keeps returning what the model
    returns, as the stock ExportArchive's does. It calls the endpoint function, so
    the graph is not traced twice, and `serving_default` shares it with its alias.
    """
    args = list(concrete.structured_input_signature[0])

    @tf.function(input_signature=args, autograph=False)
    def signature(*inputs):
        return name_outputs(concrete(*inputs), names)
    return signature.get_concrete_function()


def _with_output_keys(fn, keys, where):
    def keyed(*args):
        outputs = fn(*args)
        flat = tf.nest.flatten(outputs)
        if len(flat) != len(keys):
            raise ConfigError(f"{where}.output_keys", f"the endpoint has {len(flat)} "
                              f"output(s) but {len(keys)} key(s) were given", list(keys),
                              f"exactly {len(flat)} key(s)", "list one key per output")
        return dict(zip(keys, flat))
    return keyed
