"""Safe mode: no code from a model file or a config runs without its opt-in.

What can make code run, and the opt-in each needs (README "Security posture"):

* a Lambda layer's Python bytecode in a `.keras`, `.h5` or Keras 2 SavedModel:
  `"allow_unsafe_deserialization": true`;
* a custom layer's module, named inside a model file: only imported when the config
  lists it in `"import_modules"`;
* a factory `"fn": "module:attr"`: imported and called only when exporting; parsing
  and validating the config (what the TFX component constructor does) imports nothing.

Each payload writes a marker file when it runs. Without the opt-in the export is
refused and the marker is absent; with it the marker appears, which shows that the
payload is real and the test can fail.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from export_archive import cli
from export_archive.config import ExportConfig

pytestmark = pytest.mark.faults

SERVE = {"endpoints": [{"name": "serve"}]}


def _lambda_model(flavor: str, path: str, marker: str) -> None:
    """A model whose Lambda layer writes the file $SAFE_MODE_MARKER (`marker`) whenever
    its function runs, which includes rebuilding the model while loading it. (The path
    comes from the environment: Keras 3 cannot reload a lambda with default args.)"""
    if flavor == "keras3":
        import keras as k
    else:
        import tf_keras as k
    inp = k.Input((3,))
    out = k.layers.Lambda(lambda x: (open(__import__("os").environ["SAFE_MODE_MARKER"],
                                          "w").close(), x * 2.0)[1])(inp)
    k.Model(inp, out).save(path)
    os.remove(marker)   # building the model ran the function once, here


def _export(model: str, out: str, **config) -> int:
    return cli.main(["export", "--model", model, "--config", json.dumps({**SERVE, **config}),
                     "--output", out])


@pytest.mark.parametrize("flavor,name", [("keras3", "model.keras"), ("tf_keras", "model.h5"),
                                         ("tf_keras", "keras2_saved_model")])
def test_lambda_bytecode_runs_only_with_allow_unsafe_deserialization(flavor, name, tmp_path,
                                                                     capsys, monkeypatch):
    marker, model = str(tmp_path / "lambda_ran"), str(tmp_path / name)
    monkeypatch.setenv("SAFE_MODE_MARKER", marker)
    _lambda_model(flavor, model, marker)

    assert _export(model, str(tmp_path / "refused")) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "allow_unsafe_deserialization" in err and "Traceback" not in err
    assert not os.path.exists(marker), "the Lambda layer's code ran without the opt-in"
    assert not os.path.exists(tmp_path / "refused")

    assert _export(model, str(tmp_path / "allowed"), allow_unsafe_deserialization=True) == 0
    assert os.path.exists(marker), "the payload never ran: this test could not fail"


CUSTOM_LAYERS = '''
import keras

open({marker!r}, "w").close()


@keras.saving.register_keras_serializable(package="safe_mode_test")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0
'''


@pytest.fixture
def module_dir(tmp_path):
    path = tmp_path / "modules"
    path.mkdir()
    sys.path.insert(0, str(path))
    yield path
    sys.path.remove(str(path))


def test_module_named_in_a_model_file_is_imported_only_via_import_modules(tmp_path,
                                                                          module_dir, capsys):
    import keras
    marker = str(tmp_path / "module_imported")
    (module_dir / "safe_mode_layers.py").write_text(CUSTOM_LAYERS.format(marker=marker))
    import safe_mode_layers
    inp = keras.Input((3,))
    keras.Model(inp, safe_mode_layers.Doubler()(inp)).save(tmp_path / "custom.keras")
    # A fresh process: the module not imported, its class not registered.
    os.remove(marker)
    registered = keras.saving.get_custom_objects()
    saved = registered.pop("safe_mode_test>Doubler")
    del sys.modules["safe_mode_layers"]
    try:
        config = json.loads((lambda z: z.read("config.json"))(
            __import__("zipfile").ZipFile(tmp_path / "custom.keras")))
        assert "safe_mode_layers" in json.dumps(config)   # the file names the module
        assert _export(str(tmp_path / "custom.keras"), str(tmp_path / "o1")) == \
            cli.EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "import_modules" in err and "Traceback" not in err
        assert not os.path.exists(marker), "a module named by the model file was imported"

        assert _export(str(tmp_path / "custom.keras"), str(tmp_path / "o2"),
                       import_modules=["safe_mode_layers"]) == 0
        assert os.path.exists(marker)
    finally:
        registered.setdefault("safe_mode_test>Doubler", saved)
        sys.modules.pop("safe_mode_layers", None)


FACTORY = '''
import tensorflow as tf

open({marker!r}, "w").close()


def make(model):
    return tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, 3])])
'''


def test_factory_module_runs_only_when_exporting_with_it(tmp_path, module_dir):
    import keras
    marker = str(tmp_path / "factory_imported")
    (module_dir / "safe_mode_factory.py").write_text(FACTORY.format(marker=marker))
    config = {"endpoints": [{"name": "custom", "fn": "safe_mode_factory:make"}],
              "import_modules": ["safe_mode_factory"]}
    # Validating a config (the TFX component constructor, a KFP compile) runs no code.
    parsed = ExportConfig.parse(json.dumps(config))
    assert parsed.endpoints[0].factory == ("safe_mode_factory", "make")
    assert "safe_mode_factory" not in sys.modules and not os.path.exists(marker)
    # An export whose config does not name it never imports it.
    inp = keras.Input((3,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(tmp_path / "m.keras")
    assert _export(str(tmp_path / "m.keras"), str(tmp_path / "plain")) == 0
    assert "safe_mode_factory" not in sys.modules and not os.path.exists(marker)
    # Named by the config: the opt-in. Then it runs.
    try:
        assert cli.main(["export", "--model", str(tmp_path / "m.keras"), "--config",
                         json.dumps(config), "--output", str(tmp_path / "custom")]) == 0
        assert os.path.exists(marker)
    finally:
        sys.modules.pop("safe_mode_factory", None)
