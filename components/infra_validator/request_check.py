"""InfraValidator's requests come from TFX's request builder; when it refuses, say why.

TFX's executor builds its requests with `request_builder.build_requests`
(tfx/components/infra_validator/request_builder.py), inside `_Do`, with no hook,
and a signature it cannot build requests for raises there: TFX's component
fails. `request_problems` calls the same function first. When it raises, it asks
TFX again, one named signature at a time and with one valid tf.Example of its
own, so that only the model's signatures are blamed (a missing split or another
payload format in the Examples artifact is the pipeline's problem: TFX's error
is re-raised, as in TFX). Each refused signature is reported with its inputs,
why TFX cannot build a request for it (`CANNOT_BUILD`) and the fix; the
executor then marks the model NOT blessed, because it is the model as exported
that cannot be queried the way the pipeline asks.
"""

import contextlib
import os
import tempfile
from typing import Iterator, List

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tfx import types
from tfx.components.infra_validator import request_builder
from tfx.proto import infra_validator_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from export_archive.constants import DEFAULT_SIGNATURE, SERVE_TAG
from export_archive.saved_model_io import dims_text, read_saved_model_proto, signature_defs

# What TFX's request builder can and cannot build requests for, said once: every
# refusal on a blessing quotes it, and the tests compare with it.
CANNOT_BUILD = (
    "TFX builds requests from tf.Examples only (classify / regress: one tf.Example per "
    "request; predict: the serialized tf.Example as the signature's one input, DT_STRING "
    "of shape [?]), so it cannot build any for a signature that takes features (a "
    "features endpoint, a `kind: raw_features` endpoint)")
FIX = ("export a tf.Example endpoint (ModelExporter export_config endpoint with "
       '"kind": "tf_example") and name it in RequestSpec.tensorflow_serving.signature_names '
       "(or make it the serving_default)")
_PROBE_SPLIT = "probe"


def request_problems(model_name: str, model: types.Artifact, examples: types.Artifact,
                     request_spec: infra_validator_pb2.RequestSpec) -> List[str]:
    """Why TFX's request builder cannot query `model`, one line per cause; [] if it can.

    Raises TFX's own error when the cause is `examples`, not the model.
    """
    try:
        request_builder.build_requests(model_name=model_name, model=model,
                                       examples=examples, request_spec=request_spec)
        return []
    except (ValueError, RuntimeError):   # RuntimeError: the loader's unknown tag set
        problems = _model_refusals(model_name, model, request_spec)
        if not problems:
            raise
        return problems


def _model_refusals(model_name: str, model: types.Artifact,
                    request_spec: infra_validator_pb2.RequestSpec) -> List[str]:
    if request_spec.WhichOneof("kind") != "tensorflow_serving":
        return []   # TFX raises NotImplementedError for other kinds, as it should.
    spec = request_spec.tensorflow_serving
    tag_set = set(spec.tag_set) or {SERVE_TAG}
    proto = read_saved_model_proto(path_utils.serving_model_path(
        model.uri, path_utils.is_old_model_artifact(model)))
    # The SavedModel loader TFX calls takes the MetaGraph whose tags are exactly these.
    meta_graphs = [m for m in proto.meta_graphs if set(m.meta_info_def.tags) == tag_set]
    if not meta_graphs:
        return [f"the model has no MetaGraph tagged {sorted(tag_set)} (tag sets: "
                f"{[sorted(m.meta_info_def.tags) for m in proto.meta_graphs]}); fix: set "
                "RequestSpec.tensorflow_serving.tag_set to one of them"]
    signatures = meta_graphs[0].signature_def
    available = sorted(signature_defs(meta_graphs[0]))
    problems = []
    with _one_example() as probe:
        for name in list(spec.signature_names) or [DEFAULT_SIGNATURE]:
            if name not in signatures:
                problems.append(
                    f"signature {name!r} named in RequestSpec.tensorflow_serving."
                    f"signature_names is not in the model (signatures: {available}); fix: "
                    "name one of those, or export an endpoint with that name")
                continue
            try:
                request_builder.build_requests(model_name=model_name, model=model,
                                               examples=probe,
                                               request_spec=_only(request_spec, name))
            except (ValueError, RuntimeError) as e:
                problems.append(_refused(name, signatures[name], e))
    return problems


def _refused(name: str, signature, error: Exception) -> str:
    inputs = ", ".join(_describe_input(k, v) for k, v in sorted(signature.inputs.items()))
    return (f"signature {name!r} cannot take InfraValidator's requests: it has method "
            f"{signature.method_name!r} and {len(signature.inputs)} input(s): {inputs}. "
            f"{CANNOT_BUILD}. TFX's request builder said: {str(error).rstrip('.')}. "
            f"fix: {FIX}")


def _describe_input(name, info) -> str:
    dims = dims_text(info.tensor_shape)
    shape = "unknown" if dims is None else f"[{dims}]"
    return f"{name} ({types_pb2.DataType.Name(info.dtype)} {shape})"


def _only(request_spec: infra_validator_pb2.RequestSpec,
          name: str) -> infra_validator_pb2.RequestSpec:
    """`request_spec` for signature `name` alone, reading the probe's one example."""
    one = infra_validator_pb2.RequestSpec()
    one.CopyFrom(request_spec)
    del one.tensorflow_serving.signature_names[:]
    one.tensorflow_serving.signature_names.append(name)
    one.split_name, one.num_examples = _PROBE_SPLIT, 1
    return one


@contextlib.contextmanager
def _one_example() -> Iterator[types.Artifact]:
    """An Examples artifact as ExampleGen writes it, holding one empty tf.Example:
    input that TFX's builder reads for every signature it can build requests for."""
    with tempfile.TemporaryDirectory(prefix="infra-validator-probe-") as root:
        examples = standard_artifacts.Examples()
        examples.uri = root
        examples.split_names = artifact_utils.encode_split_names([_PROBE_SPLIT])
        split_dir = artifact_utils.get_split_uri([examples], _PROBE_SPLIT)
        os.makedirs(split_dir)
        with tf.io.TFRecordWriter(os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz"),
                                  options="GZIP") as writer:
            writer.write(tf.train.Example().SerializeToString())
        yield examples
