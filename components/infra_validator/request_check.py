"""Can InfraValidator build its requests for this model? Said before any server starts.

TFX's request builder (tfx/components/infra_validator/request_builder.py) turns
each signature named in `RequestSpec.tensorflow_serving.signature_names` into
requests: a Classify or Regress request per example for classify/regress
signatures, and for a Predict signature a PredictRequest whose one input is the
serialized tf.Example, which needs a signature with exactly one DT_STRING input
of shape [None]. When a signature does not fit, TFX raises a ValueError and the
component fails; the variant checks the same rules first and marks the model
NOT blessed with a message that says what to change, because it is the model as
exported that cannot be queried the way the pipeline asks.
"""

import os
from typing import List

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from tfx.proto import infra_validator_pb2

DEFAULT_TAG_SET = ("serve",)
DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"

FIX = ("export a tf.Example endpoint (ModelExporter export_config endpoint with "
       '"kind": "tf_example") and name it in RequestSpec.tensorflow_serving.signature_names '
       "(or make it the serving_default)")


def _describe_input(name, info) -> str:
    dims = ("?" if d.size < 0 else str(d.size) for d in info.tensor_shape.dim)
    shape = "unknown" if info.tensor_shape.unknown_rank else f"[{','.join(dims)}]"
    return f"{name} ({types_pb2.DataType.Name(info.dtype)} {shape})"


def _takes_serialized_examples(sig) -> bool:
    if len(sig.inputs) != 1:
        return False
    info = next(iter(sig.inputs.values()))
    dims = info.tensor_shape.dim
    return (info.dtype == types_pb2.DT_STRING and not info.tensor_shape.unknown_rank
            and len(dims) == 1 and dims[0].size == -1)


def request_problems(model_path: str,
                     request_spec: infra_validator_pb2.RequestSpec) -> List[str]:
    """Problems that keep TFX's request builder from querying `model_path`; [] if none."""
    if request_spec.WhichOneof("kind") != "tensorflow_serving":
        return []   # TFX raises NotImplementedError for other kinds, as it should.
    spec = request_spec.tensorflow_serving
    tag_set = set(spec.tag_set) or set(DEFAULT_TAG_SET)
    names = list(spec.signature_names) or [DEFAULT_SIGNATURE]
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(model_path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    meta_graphs = [m for m in proto.meta_graphs if set(m.meta_info_def.tags) == tag_set]
    if not meta_graphs:
        return [f"the model has no MetaGraph tagged {sorted(tag_set)} (tag sets: "
                f"{[sorted(m.meta_info_def.tags) for m in proto.meta_graphs]}); fix: set "
                "RequestSpec.tensorflow_serving.tag_set to one of them"]
    signatures = meta_graphs[0].signature_def
    available = sorted(k for k in signatures if not k.startswith("__"))
    problems = []
    for name in names:
        if name not in signatures:
            problems.append(f"signature {name!r} named in RequestSpec.tensorflow_serving."
                            f"signature_names is not in the model (signatures: {available}); "
                            "fix: name one of those, or export an endpoint with that name")
            continue
        sig = signatures[name]
        if sig.method_name == PREDICT and not _takes_serialized_examples(sig):
            inputs = ", ".join(_describe_input(k, v) for k, v in sorted(sig.inputs.items()))
            problems.append(
                f"signature {name!r} cannot take InfraValidator's requests: a Predict "
                "signature must have exactly one input of serialized tf.Examples (DT_STRING, "
                f"shape [?]), and {name!r} has {len(sig.inputs)}: {inputs}; fix: {FIX}")
        elif sig.method_name not in (PREDICT, CLASSIFY, REGRESS):
            problems.append(f"signature {name!r} has method {sig.method_name!r}, which TF "
                            "Serving's Predict/Classify/Regress APIs cannot call; fix: "
                            f"name another signature ({available})")
    return problems

