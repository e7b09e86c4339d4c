"""The peak resident memory a model load adds, measured in a fresh process.

VmHWM is the kernel's exact high-water mark of the process's own RSS (not a poll;
ru_maxrss would also count the parent's RSS at fork). The growth is taken over the
RSS once the script's imports are done (their own peak is lower than any model's).
"""

import json
import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

PRELUDE = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import warnings; warnings.filterwarnings("ignore")

def status(field):   # bytes
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
"""


def peak_growth(body: str, path: str, mode: str) -> dict:
    """Runs PRELUDE + `body` as `python -c body path mode src`; `body` prints one JSON line
    last (typically with `status("VmHWM") - before`)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", PRELUDE + body, path, mode, SRC], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


TABLE_ROWS, TABLE_DIM = 1 << 19, 64          # 128 MiB of float32: over the 64 MiB floor
TABLE_BYTES = TABLE_ROWS * TABLE_DIM * 4


def half_filled_table(keras_module):
    """A model of one Embedding table named "table" (Keras 3 or tf_keras), every value 0.5:
    a stream that skips or repeats a slice changes the sum of a column."""
    import numpy as np
    model = keras_module.Sequential([
        keras_module.Input((), dtype="int32"),
        keras_module.layers.Embedding(TABLE_ROWS, TABLE_DIM, name="table")])
    model.get_layer("table").embeddings.assign(np.full((TABLE_ROWS, TABLE_DIM), 0.5, "float32"))
    return model
