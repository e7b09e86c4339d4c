"""Names fixed by TF Serving, TensorFlow's SavedModel format and our contract, in one place.

Standard library only: `serving_contract.py`, which runs as a script in a process
that imports nothing of this package, loads this file by path.
"""

import os

# ---- TensorFlow's SavedModel layout.
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
SERVE_TAG = "serve"                       # the MetaGraph tag TF Serving loads
# ---- TF Serving's (tensorflow_serving/servables/tensorflow/*) names.
DEFAULT_SIGNATURE = "serving_default"     # the signature a request naming none gets
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# Config method name -> the signature's method_name.
METHOD_NAMES = {"predict": PREDICT_METHOD, "classify": CLASSIFY_METHOD,
                "regress": REGRESS_METHOD}

# ---- change kinds. A change is compatible when every request an old client
# sends is still accepted and answered with what it reads; otherwise breaking.
COMPATIBLE_KINDS = (
    "signature_added",        # nobody calls it yet
    "output_added",           # Predict returns it too; clients read their keys
                              # (but see single_output_widened)
    "input_shape_relaxed",    # a fixed dim became None: old requests still fit
    "output_shape_relaxed",   # statically looser; the warmup replay checks real shapes
)
BREAKING_KINDS = (
    "signature_removed", "signature_renamed",
    "method_changed",          # Classify/Regress refuse a signature of another method
    "default_changed",         # requests naming no signature get another contract
    "input_added",             # Predict needs every signature input: old requests lack it
    "input_removed", "input_renamed",
    "input_dtype_changed", "input_shape_narrowed", "input_shape_changed",
    "input_encoding_changed",
    "output_removed", "output_renamed",
    "output_dtype_changed", "output_shape_narrowed", "output_shape_changed",
    "output_encoding_changed",
    "single_output_widened",   # REST: `predictions` turns from values into objects
    "request_failed",          # an old warmup request fails on the new model
    "response_changed",        # ... or answers with other keys, dtypes or shapes
)
CHANGE_KINDS = COMPATIBLE_KINDS + BREAKING_KINDS
