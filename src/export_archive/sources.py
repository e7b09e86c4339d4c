"""Model sources: what a Trainer can leave behind, loaded and described uniformly.

A `ModelSource` wraps one of

* ``keras3``: a Keras 3 model or layer (in memory or a ``.keras`` file);
* ``tf_keras``: a Keras 2 (tf_keras) model (in memory, an ``.h5`` file or a
  Keras 2 SavedModel directory, which carries ``keras_metadata.pb``);
* ``saved_model``: any TF2 SavedModel restored with `tf.saved_model.load`, or
  an in-memory `tf.Module`, whose signatures and functions endpoints can call.

and knows which `ExportArchive` to use, how to call the model in inference or
training mode, the model's input signature and its variable sources.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

from export_archive.config import ConfigError, ExportConfig, VariableCollectionConfig

KERAS3, TF_KERAS, SAVED_MODEL = "keras3", "tf_keras", "saved_model"
KERAS_FILE_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


class SourceError(ValueError):
    """The model (or what it was asked for) cannot be used as configured."""


def _is_keras3(obj: Any) -> bool:
    import keras
    return isinstance(obj, keras.layers.Layer)


def _is_tf_keras(obj: Any) -> bool:
    import tf_keras
    return isinstance(obj, tf_keras.layers.Layer)


class ModelSource:
    """A loaded model plus what the endpoint builders need to know about it."""

    def __init__(self, obj: Any, flavor: str, origin: str = "<in-memory>"):
        self.obj, self.flavor, self.origin = obj, flavor, origin

    # ---- construction

    @classmethod
    def wrap(cls, model: Any, config: Optional[ExportConfig] = None) -> "ModelSource":
        """Wraps an in-memory model, or loads one from a path."""
        if isinstance(model, ModelSource):
            return model
        if isinstance(model, (str, os.PathLike)):
            return load(os.fspath(model), config or _EMPTY_CONFIG)
        if _is_keras3(model):
            return cls(model, KERAS3)
        if _is_tf_keras(model):
            return cls(model, TF_KERAS)
        if isinstance(model, tf.Module) or isinstance(model, tf.__internal__.tracking.AutoTrackable):
            return cls(model, SAVED_MODEL)
        raise SourceError(
            f"Cannot export an object of type {type(model).__name__}: expected a Keras 3 "
            "model or layer, a tf_keras model, a tf.Module, or a path to a .keras file, "
            "an .h5 file or a SavedModel directory.")

    # ---- what the archive tracks

    def trackables(self) -> List[Any]:
        return [self.obj]

    def check_built(self) -> None:
        if self.flavor in (KERAS3, TF_KERAS) and not self.obj.built:
            raise SourceError(
                f"The model {self.name!r} has not been built: call it on a batch or "
                "build it with its input shape before exporting.")

    @property
    def name(self) -> str:
        return getattr(self.obj, "name", type(self.obj).__name__)

    # ---- calling the model

    def call_fn(self, training: bool, where: str) -> Callable:
        """A function of the model's positional inputs, in the given mode."""
        if self.flavor in (KERAS3, TF_KERAS):
            model = self.obj
            return lambda *args: model(*args, training=training)
        call = self._restored_call()
        if not _is_restored_function(call):
            raise ConfigError(
                f"{where}.fn", "this SavedModel has no call function (it was saved "
                "without a traced __call__ or serve function)", "call",
                '"signature:NAME" with one of: ' + ", ".join(sorted(self.signature_names()))
                or "(none)", 'use fn "signature:NAME" instead of "call"')
        if training and not _has_training_trace(call, True):
            raise ConfigError(
                f"{where}.training", "this SavedModel has no training-mode call function "
                "(its __call__ was never traced with training=True)", True,
                "training: false for this source", "export from the Keras model itself, "
                "or drop `training`")
        kwargs = {"training": training} if _accepts_training(call) else {}

        def call_restored(*args):
            return call(*args, **kwargs)
        # Keep the restored object alive as long as the function: it owns the variables
        # the restored function reads, and a caller that keeps only the function (the
        # Beam parity workers) would otherwise find them deleted.
        call_restored.owner = self.obj
        return call_restored

    def _restored_call(self):
        """The restored function that is "the model": `__call__` (tf.saved_model.save
        of a Keras 2 model or tf.Module) or else `serve` (Keras 3 `model.export`)."""
        for attr in ("__call__", "serve"):
            fn = getattr(self.obj, attr, None)
            if _is_restored_function(fn):
                return fn
        return None

    def signature_names(self) -> List[str]:
        sigs = getattr(self.obj, "signatures", None)
        return list(sigs.keys()) if sigs is not None else []

    def signature(self, name: str, where: str):
        names = self.signature_names()
        if name not in names:
            raise ConfigError(f"{where}.fn", f"the source has no signature {name!r}",
                              f"signature:{name}", ", ".join(names) or "(it has none)",
                              "name an existing signature (see `export-archive describe`)")
        return self.obj.signatures[name]

    def infer_input_signature(self, where: str) -> List[Any]:
        """The model's own input signature (a list, one entry per positional argument)."""
        if self.flavor == KERAS3:
            self._refuse_uncalled_subclassed(where)
        try:
            if self.flavor == KERAS3:
                from keras.src.export import export_utils
                sig = export_utils.get_input_signature(self.obj)
                names = self._input_layer_names()
                return tf.nest.map_structure(
                    lambda spec: _renamed(_to_tensor_spec(spec), names), sig)
            if self.flavor == TF_KERAS:
                spec = self.obj._get_save_spec(dynamic_batch=True)  # pylint: disable=protected-access
                if spec is None:
                    raise ValueError("the model was never called")
                return [spec]
            call = self._restored_call()
            if _is_restored_function(call):
                # Keras-saved call functions also take (training, mask) positionally:
                # the model inputs are the leading arguments that hold tensor specs.
                args = _first_trace(call).structured_input_signature[0]
                inputs = []
                for arg in args:
                    if not tf.nest.flatten(arg) or not all(
                            isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(arg)):
                        break
                    inputs.append(arg)
                return inputs
            raise ValueError("the SavedModel has no traced __call__")
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"{where}.input_signature", f"cannot infer the inputs of {self.name!r} ({e})",
                fix='give input_signature explicitly, e.g. ["float32[?,3]"]') from None

    def _refuse_uncalled_subclassed(self, where: str) -> None:
        """A subclassed Keras 3 model records its inputs only when called in this
        process, so one loaded from a .keras file has none (stock `model.export()`
        fails too: "The model provided has never called"). Say so in the user's
        terms, with the shapes Keras did record at build time as the fix."""
        import keras
        from keras.src.models.functional import Functional
        model = self.obj
        if (not isinstance(model, keras.Model) or isinstance(model, (Functional, keras.Sequential))
                or getattr(model, "_called", True)):
            return
        # Build shapes are recorded (and saved) per call argument; dtypes are not.
        shapes = [s for s in (getattr(model, "_build_shapes_dict", None) or {}).values()
                  if isinstance(s, (tuple, list)) and all(isinstance(d, (int, type(None)))
                                                          for d in s)]
        leaves = [f'"{model.input_dtype}[' + ",".join(["?"] + [
            "?" if d is None else str(d) for d in shape[1:]]) + ']"' for shape in shapes]
        raise ConfigError(
            f"{where}.input_signature",
            f"cannot infer the inputs of the subclassed model {self.name!r} ({self.origin}): "
            "Keras records a subclassed model's inputs only when it is called in the same "
            "process, and this one has not been (a model loaded from a .keras file has not "
            "been called since loading; stock `model.export()` fails the same way: \"The "
            "model provided has never called\")",
            fix="give input_signature explicitly" + (
                f", e.g. [{', '.join(leaves)}] from the shapes it was built with (Keras does "
                "not record the dtypes: check them)" if leaves else ', e.g. ["float32[?,3]"]'))

    def _input_layer_names(self) -> Dict[str, str]:
        """Keras 3 names an unnamed Input's tensor `keras_tensor_N`; its InputLayer
        carries the name the model shows (`input_layer`, or the one given)."""
        names = {}
        for tensor in tf.nest.flatten(getattr(self.obj, "inputs", None) or []):
            history = getattr(tensor, "_keras_history", None)
            layer = getattr(history, "operation", None)
            if getattr(tensor, "name", None) and getattr(layer, "name", None):
                names[tensor.name] = layer.name
        return names

    def output_names(self) -> Optional[List[str]]:
        """The model's own names for its outputs, in flat order: the output layers'
        names (what `model.output_names` and a tf_keras `model.save` signature use).
        None when the model has no such names (subclassed, restored functions) or
        already returns a dict, whose keys then name the outputs."""
        if self.flavor not in (KERAS3, TF_KERAS):
            return None
        structure = getattr(self.obj, "_outputs_struct", None) if self.flavor == KERAS3 \
            else getattr(self.obj, "_nested_outputs", None)
        if isinstance(structure, dict):
            return None
        try:
            outputs = tf.nest.flatten(getattr(self.obj, "outputs", None) or [])
        except (AttributeError, ValueError):
            return None
        names = []
        for tensor in outputs:
            layer = getattr(getattr(tensor, "_keras_history", None), "operation", None) \
                or getattr(getattr(tensor, "_keras_history", None), "layer", None)
            names.append(getattr(layer, "name", None))
        if not names or None in names or len(set(names)) != len(names):
            return None
        return names

    # ---- variables

    def variables_for(self, collection: VariableCollectionConfig, where: str) -> List[Any]:
        obj, source = self.obj, collection.source
        path = f"{where}.source"
        if collection.layer_name is not None:
            get_layer = getattr(obj, "get_layer", None)
            names = [l.name for l in getattr(obj, "layers", [])]
            try:
                layer = get_layer(collection.layer_name) if get_layer else None
            except ValueError:
                layer = None
            if layer is None:
                raise ConfigError(path, f"the model has no layer {collection.layer_name!r}",
                                  source, ", ".join(f"layer:{n}" for n in names) or
                                  "(this source has no layers)", "name an existing layer")
            return list(layer.variables)
        if source == "optimizer":
            optimizer = getattr(obj, "optimizer", None)
            if optimizer is None:
                raise ConfigError(path, f"the model has no optimizer ({self.origin} was not "
                                  "compiled, or was loaded without its training config)",
                                  source, "trainable, non_trainable, all, layer:NAME",
                                  "compile the model before exporting, or drop this collection")
            if self.flavor == KERAS3 and not optimizer.built:
                optimizer.build(obj.trainable_variables)
            variables = optimizer.variables
            return list(variables() if callable(variables) else variables)
        attr = {"trainable": "trainable_variables", "non_trainable": "non_trainable_variables",
                "all": "variables"}[source]
        variables = getattr(obj, attr, None)
        if variables is None:
            raise ConfigError(path, f"this {self.flavor} source has no {attr}", source,
                              "a Keras model for this source", "drop this collection")
        return list(variables)


_EMPTY_CONFIG = ExportConfig.parse({"endpoints": [{"name": "serve"}]})


def _renamed(spec: tf.TensorSpec, names: Dict[str, str]) -> tf.TensorSpec:
    if spec.name in names and names[spec.name] != spec.name:
        return tf.TensorSpec(spec.shape, spec.dtype, name=names[spec.name])
    return spec


def _to_tensor_spec(spec: Any) -> tf.TensorSpec:
    if isinstance(spec, tf.TensorSpec):
        return spec
    return tf.TensorSpec(shape=spec.shape, dtype=tf.as_dtype(spec.dtype or "float32"),
                         name=getattr(spec, "name", None))


def _is_restored_function(fn: Any) -> bool:
    return hasattr(fn, "concrete_functions") and bool(getattr(fn, "concrete_functions", None))


def _first_trace(fn: Any):
    return fn.concrete_functions[0]


def _training_values(fn: Any) -> List[Any]:
    values = []
    for concrete in fn.concrete_functions:
        args, kwargs = concrete.structured_input_signature
        if "training" in kwargs:
            values.append(kwargs["training"])
        elif len(args) > 1 and isinstance(args[1], bool):
            values.append(args[1])
    return values


def _accepts_training(fn: Any) -> bool:
    return bool(_training_values(fn))


def _has_training_trace(fn: Any, value: bool) -> bool:
    return value in _training_values(fn)


# ---- loading from paths


def import_modules(config: ExportConfig) -> None:
    """Imports the config's `import_modules` (custom layers register themselves there)."""
    for i, name in enumerate(config.import_modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"import_modules[{i}]", f"cannot import module ({e})", name,
                              "modules importable in this environment",
                              "install the package or fix PYTHONPATH") from None


def resolve_model_path(path: str) -> str:
    """A TFX Model artifact keeps its SavedModel in Format-Serving/ (the layout
    tfx.utils.path_utils.serving_model_path reads); accept the artifact root too."""
    serving = os.path.join(path, "Format-Serving")
    return serving if tf.io.gfile.isdir(serving) else path


def find_model_file(path: str) -> str:
    """Resolves a path to the model inside it: the path itself, or a single model file in a directory."""
    if not tf.io.gfile.isdir(path):
        return path
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    candidates = [n for n in tf.io.gfile.listdir(path)
                  if n.endswith(KERAS_FILE_SUFFIXES + H5_SUFFIXES)]
    if len(candidates) == 1:
        return os.path.join(path, candidates[0])
    looked_for = ("saved_model.pb, or exactly one *.keras / *.h5 file")
    found = ", ".join(sorted(tf.io.gfile.listdir(path))[:20]) or "(empty directory)"
    raise SourceError(f"No model found in {path}: looked for {looked_for}; found: {found}.")


def load(path: str, config: ExportConfig) -> ModelSource:
    """Loads a model from a path (see module docstring for what is understood)."""
    if not tf.io.gfile.exists(path):
        raise SourceError(f"Model path {path} does not exist.")
    import_modules(config)
    model_path = find_model_file(path)
    safe_mode = not config.allow_unsafe_deserialization
    try:
        if model_path.endswith(KERAS_FILE_SUFFIXES):
            import keras
            model = keras.saving.load_model(model_path, safe_mode=safe_mode)
            return ModelSource(model, KERAS3, model_path)
        if model_path.endswith(H5_SUFFIXES):
            import tf_keras
            model = tf_keras.models.load_model(model_path, safe_mode=safe_mode)
            return ModelSource(model, TF_KERAS, model_path)
        if tf.io.gfile.exists(os.path.join(model_path, "keras_metadata.pb")):
            import tf_keras
            model = tf_keras.models.load_model(model_path, safe_mode=safe_mode)
            return ModelSource(model, TF_KERAS, model_path)
        return ModelSource(tf.saved_model.load(model_path), SAVED_MODEL, model_path)
    except ValueError as e:
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise SourceError(
                f"Loading {model_path} needs unsafe deserialization ({e}). If you trust "
                "this model, set \"allow_unsafe_deserialization\": true in the export "
                "config.") from None
        raise SourceError(f"Cannot load the model at {model_path}: {e}") from None
    except TypeError as e:
        raise SourceError(
            f"Cannot load the model at {model_path}: {e}. If it uses custom layers, list "
            "the module that registers them in \"import_modules\".") from None
