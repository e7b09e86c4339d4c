"""The TFX example Trainer modules of the zoo, and what each needs to run here.

Imports neither TensorFlow nor TFX: the pytest process (Keras 3) and the runner
subprocess (`tfx_trainer_runner.py`, Keras 2) both use this table, and the
test process only decides here which modules can run at all.

The table is checked against the installed wheel (`discover_keras_trainer_modules`):
a TFX upgrade that adds or drops a Keras Trainer module fails the zoo until the
table is updated, instead of silently shrinking it.
"""

import dataclasses
import importlib.util
import os
import re
import socket
from typing import Dict, List, Optional, Tuple

# The taxi modules are held back on purpose, as an independent check of the
# exporter that the zoo is never tuned against.
EXCLUDED_PREFIX = "taxi_"
# Trainer modules in the examples that build no Keras model (Flax / scikit-learn):
# a Keras ExportArchive has nothing to export for them.
NOT_KERAS = {
    "penguin/penguin_utils_flax_experimental.py": "builds a Flax model (jax2tf), not Keras",
    "penguin/experimental/penguin_utils_sklearn.py": "builds a scikit-learn model, not Keras",
}

TRAIN_STEPS = 3
EVAL_STEPS = 1
# The serving comparison runs the whole eval split at these batch sizes (the
# whole split in one request, and small uneven batches).
BATCH_SIZES = (0, 7)   # 0: the whole split in one batch
TOLERANCE = 1e-5

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PENGUIN_CSV = os.path.join(PROJECT_ROOT, "pipelines", "data", "penguins", "penguins.csv")


@dataclasses.dataclass(frozen=True)
class TrainerModule:
    """One Trainer module of the installed tfx wheel's examples."""
    id: str
    path: str                    # relative to tfx/examples
    label: str                   # raw label feature, excluded from the serving endpoint
    data: str                    # "penguin" | "imdb" | "mnist" (see tfx_trainer_runner)
    requires: Tuple[str, ...] = ()   # importable packages the module needs beyond the stack
    downloads: Optional[str] = None  # a URL the module fetches at run time
    input_format: str = "tf.Example"
    # Another module whose Transform output this one reuses, because both define
    # `preprocessing_fn = penguin_utils_base.preprocessing_fn` (the runner asserts
    # it is the same function): Transform is the slowest step, and the cache then
    # runs it once for both.
    transform_of: Optional[str] = None
    # The module's `downloads` is a TF Hub BERT module: the runner runs a copy of
    # the module whose `_BERT_LINK` (and `_MAX_LEN`: TINY_BERT_MAX_LEN) point at a
    # tiny local module in the same format (tiny_bert_hub.py) instead.
    tiny_hub: bool = False

    @property
    def export_config(self) -> Dict:
        return {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                               "transform": True, "exclude_features": [self.label]}]}


MODULES = [
    TrainerModule("penguin_keras", "penguin/penguin_utils_keras.py", "species", "penguin"),
    TrainerModule("penguin_cloud_tuner", "penguin/penguin_utils_cloud_tuner.py", "species",
                  "penguin", requires=("tensorflow_cloud",)),
    TrainerModule("penguin_tfdf", "penguin/penguin_utils_tfdf_experimental.py", "species",
                  "penguin", requires=("tensorflow_decision_forests",),
                  transform_of="penguin_keras"),
    TrainerModule("imdb_native_keras", "imdb/imdb_utils_native_keras.py", "label", "imdb"),
    TrainerModule("mnist_native_keras", "mnist/mnist_utils_native_keras.py", "image_class",
                  "mnist"),
    TrainerModule("bert_cola", "bert/cola/bert_cola_utils.py", "label", "cola",
                  requires=("tensorflow_hub", "tensorflow_text"),
                  downloads="https://tfhub.dev/tensorflow/bert_en_cased_L-12_H-768_A-12/2",
                  tiny_hub=True),
    TrainerModule("bert_mrpc", "bert/mrpc/bert_mrpc_utils.py", "label", "mrpc",
                  requires=("tensorflow_hub", "tensorflow_text"),
                  downloads="https://tfhub.dev/tensorflow/bert_en_cased_L-12_H-768_A-12/2",
                  tiny_hub=True),
    TrainerModule("ranking", "ranking/ranking_utils.py", "relevance", "ranking",
                  requires=("tensorflow_ranking", "struct2tensor"),
                  input_format="ExampleListWithContext"),
]
BY_ID = {m.id: m for m in MODULES}

# The module constants a tiny_hub module's copy replaces, each found exactly once
# (`_BERT_LINK` by the tiny module's path): BERT-base's 256 (CoLA) and 128 (MRPC)
# tokens per record become 32, which the generated sentences fit.
TINY_BERT_MAX_LEN = 32
TINY_HUB_SOURCE = "tests/zoo/tiny_bert_hub.py"


def examples_dir() -> str:
    """tfx/examples of the installed wheel, found without importing tfx (50 s)."""
    spec = importlib.util.find_spec("tfx")
    return os.path.join(os.path.dirname(spec.origin), "examples")


def module_file(module: TrainerModule) -> str:
    return os.path.join(examples_dir(), module.path)


def discover_keras_trainer_modules() -> List[str]:
    """Modules under tfx/examples with a `run_fn` that builds a Keras model.

    A Trainer module is one that defines `run_fn`; it builds a Keras model when
    it uses keras (tf.keras, keras, tfdf.keras). Tests and taxi_* are left out.
    """
    root = examples_dir()
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py") or name.endswith("_test.py"):
                continue
            if name.startswith(EXCLUDED_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if not re.search(r"^def run_fn\(", text, re.M):
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel in NOT_KERAS:
                continue
            if _uses_keras(text, root):
                found.append(rel)
    return sorted(found)


def _uses_keras(text: str, root: str) -> bool:
    """Keras in the module itself or in the tfx.examples modules it imports (BERT's
    model is built in tfx/examples/bert/utils/bert_models.py)."""
    if re.search(r"\bkeras\b", text):
        return True
    for imported in re.findall(r"^from tfx\.examples\.([\w.]+) import (\w+)", text, re.M):
        for candidate in (os.path.join(root, *imported[0].split("."), imported[1] + ".py"),
                          os.path.join(root, *imported[0].split(".")) + ".py"):
            if os.path.exists(candidate):
                with open(candidate, encoding="utf-8") as f:
                    if re.search(r"\bkeras\b", f.read()):
                        return True
    return False


def _reachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """None if a TCP connection to the URL's host opens, else the error."""
    host = re.match(r"https?://([^/:]+)", url).group(1)
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def not_runnable_reason(module: TrainerModule) -> Optional[str]:
    """Why the module cannot run in this environment, or None.

    Checked, not assumed: a package that is installed, or a network that is up,
    makes the module run (or fail) like any other.
    """
    reasons = []
    if module.input_format != "tf.Example":
        # ranking_utils parses ExampleListWithContext with struct2tensor: a
        # `kind: tf_example` endpoint (one string[?] of tf.Examples) has nothing to
        # serve it with, so it is outside what the zoo compares even when installed.
        reasons.append(f"reads {module.input_format} records (struct2tensor), not "
                       f"tf.Example: no `kind: tf_example` endpoint applies")
    missing = [p for p in module.requires if importlib.util.find_spec(p) is None]
    if missing:
        reasons.append(f"imports {', '.join(missing)}, not installed")
    if module.downloads and not module.tiny_hub:
        error = _reachable(module.downloads)
        if error:
            reasons.append(f"downloads {module.downloads} at run time (hub.KerasLayer); "
                           f"no network here ({error})")
        else:
            # Reachable: BERT-base (110M parameters) still does not train in the
            # zoo's time budget on 2 cores.
            reasons.append(f"fine-tunes BERT-base from {module.downloads} (110M "
                           f"parameters): beyond the zoo's time budget")
    return "; ".join(reasons) or None


def substitution_note(module: TrainerModule) -> Optional[str]:
    """Why a tiny_hub module runs against a local BERT-format module instead of
    its own `downloads` (checked, like not_runnable_reason), and what else differs
    from the wheel's module; None for the others."""
    if not module.tiny_hub:
        return None
    host = re.match(r"https?://([^/:]+)", module.downloads).group(1)
    local = f"run against a tiny local BERT-format hub module ({TINY_HUB_SOURCE})"
    error = _reachable(module.downloads)
    why = (f"{host} unreachable: {local} ({error})" if error else
           f"{host} reachable, but BERT-base (110M parameters) is beyond the zoo's "
           f"time budget: {local}")
    return (f"{why}; module constants replaced: _BERT_LINK, _MAX_LEN = "
            f"{TINY_BERT_MAX_LEN}; tensorflow_hub 0.15 imported with stand-ins for "
            f"pkg_resources and tf.compat.v1.estimator, which this stack lacks "
            f"(tiny_bert_hub.import_tensorflow_hub)")
