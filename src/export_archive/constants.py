"""Names shared by modules on different layers, standard library only.

config (which must import no TensorFlow) and contract both need the contract's
change kinds; they live here so neither imports the other. TF Serving's names are
here too: `saved_model_io`, rest.py (the port of TF Serving's JSON rules),
serving_contract.py (the script the serving check runs) and the rest import them
from here. This module imports nothing but the standard library, so every layer
can, the serving check's Keras-free process included.
"""

import os

# ---- TensorFlow's SavedModel and TF Serving's names (signature_constants.py,
# tag_constants.py, and the warmup file TF Serving replays at load).
SERVE_TAG = "serve"                       # the MetaGraph tag TF Serving loads
DEFAULT_SIGNATURE = "serving_default"     # the signature a request naming none gets
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Config method name -> the SignatureDef's method_name.
METHOD_NAMES = {
    "predict": "tensorflow/serving/predict",
    "classify": "tensorflow/serving/classify",
    "regress": "tensorflow/serving/regress",
}

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
