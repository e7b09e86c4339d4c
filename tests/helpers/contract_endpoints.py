"""Endpoint factories for the contract e2e test: three retrains of one client API.

`v1` is what clients call first (two outputs: a second output added to a
single-output signature would reshape REST answers, see docs/contract.md);
`renamed_input` renames `island` (a break: clients still send `island`);
`added_output` keeps every input and output of v1 and adds `probabilities`
(compatible). Each takes the Trainer's Keras model and
returns (function, input signature), as `"fn": "module:attr"` factories do.
"""

import tensorflow as tf


def _features_endpoint(model, renames=None, probabilities=False):
    renames = renames or {}
    names = [t.name for t in model.inputs]
    specs = {renames.get(n, n): tf.TensorSpec([None, 1], t.dtype, name=renames.get(n, n))
             for n, t in zip(names, model.inputs)}

    def serve(features):
        logits = model({n: features[renames.get(n, n)] for n in names}, training=False)
        out = {"logits": logits, "class_id": tf.argmax(logits, axis=-1)}
        if probabilities:
            out["probabilities"] = tf.nn.softmax(logits)
        return out
    return serve, [specs]


def v1(model):
    return _features_endpoint(model)


def renamed_input(model):
    return _features_endpoint(model, renames={"island": "island_id"})


def added_output(model):
    return _features_endpoint(model, probabilities=True)
