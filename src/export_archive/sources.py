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
import json
import os
import zipfile
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from export_archive import checkpoint_weights, keras_weights, memory
from export_archive.config import ExportConfig, VariableCollectionConfig
from export_archive.errors import ConfigError, InputError
# The SavedModel readers and the model's error are one layer down, in saved_model_io
# (which the serving check's process imports too); re-exported here for callers.
from export_archive.saved_model_io import (  # noqa: F401  (re-exported)
    RESAVE_SAVED_MODEL, SourceError, check_saved_model_proto, error_summary,
    find_serve_meta_graph, listdir as _listdir, unreadable as _unreadable)

KERAS3, TF_KERAS, SAVED_MODEL = "keras3", "tf_keras", "saved_model"
KERAS_FILE_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


# Keras 3 and tf_keras are imported for the flavor in use only: either may be missing.


def _is_keras3(obj: Any) -> bool:
    import keras  # optional (see above)
    return isinstance(obj, keras.layers.Layer)


def _is_tf_keras(obj: Any) -> bool:
    import tf_keras  # optional (see above)
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
            "<in-memory>", f"cannot export an object of type {type(model).__name__}",
            type(model).__name__, "a Keras 3 model or layer, a tf_keras model, a tf.Module, "
            "or a path to a .keras file, an .h5 file or a SavedModel directory",
            "pass the trained model (expected a Keras 3 model, a tf_keras model or a "
            "tf.Module) or its path")

    # ---- what the archive tracks

    def trackables(self) -> List[Any]:
        return [self.obj]

    def check_built(self) -> None:
        if self.flavor in (KERAS3, TF_KERAS) and not self.obj.built:
            raise SourceError(
                self.origin, f"the model {self.name!r} has not been built",
                fix="call it on a batch, or build it with its input shape, before exporting")

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
                from keras.src.export import export_utils   # Keras 3: optional
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
        # Keras 3 (optional): imported for a Keras 3 model only.
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

    def _built_optimizer_variables(self, optimizer, path: str) -> List[Any]:
        """Every variable of the optimizer: its slots created first if it has none yet
        (a compiled, untrained model; an optimizer tf_keras restored from a SavedModel,
        which revives only `iterations`), and a restored optimizer's slots and
        iterations read back from the SavedModel's checkpoint. Without this a
        restored Adam gave 1 variable of the 9 it was saved with."""
        build = getattr(optimizer, "build", None)
        # Keras 3 says `built`; tf_keras's optimizers keep `_built` (build is a no-op
        # once they are).
        built = getattr(optimizer, "built", getattr(optimizer, "_built", False))
        if callable(build) and not built:
            build(self.obj.trainable_variables)
        elif hasattr(optimizer, "_create_all_weights"):   # tf_keras legacy optimizers
            optimizer._create_all_weights(self.obj.trainable_variables)  # pylint: disable=protected-access
        if self.flavor == TF_KERAS and tf.io.gfile.isdir(self.origin):
            self._restore_optimizer_state(path)
        variables = _optimizer_variables(optimizer)
        if not variables:
            raise ConfigError(path, f"the optimizer of {self.origin} has no variables",
                              "optimizer", "an optimizer with state",
                              "train (or build) the optimizer before exporting, or drop "
                              "this collection")
        return variables

    def _restore_optimizer_state(self, path: str) -> None:
        """Reads the optimizer's state back from a Keras 2 SavedModel's checkpoint, now
        that its slot variables exist (the model's own weights are read again too)."""
        prefix = os.path.join(self.origin, "variables", "variables")
        try:
            status = tf.train.Checkpoint(root=self.obj).read(prefix)
            status.assert_existing_objects_matched()
        except AssertionError as e:
            raise SourceError(
                self.origin, "the SavedModel does not hold the optimizer's state (its slot "
                f"variables are not in variables/: {error_summary(e)})",
                allowed="a Keras 2 SavedModel saved with include_optimizer=True",
                fix="re-save the trained model with its optimizer, or drop the "
                    f"collection at `{path.rsplit('.', 1)[0]}`") from None
        except (tf.errors.OpError, ValueError, IndexError) as e:
            raise _cannot_load(self.origin, SAVED_MODEL, e) from None

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
            return self._built_optimizer_variables(optimizer, path)
        attr = {"trainable": "trainable_variables", "non_trainable": "non_trainable_variables",
                "all": "variables"}[source]
        variables = getattr(obj, attr, None)
        if variables is None:
            raise ConfigError(path, f"this {self.flavor} source has no {attr}", source,
                              "a Keras model for this source", "drop this collection")
        return list(variables)


def _optimizer_variables(optimizer) -> List[Any]:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


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
        import_user_module(name, f"import_modules[{i}]", name)


def import_user_module(name: str, path: str, received: Any):
    """Imports a module the config names (`import_modules`, a factory's module).

    Its failure is the user's, not this program's: a `ConfigError` at `path`,
    with what the import raised, instead of our traceback.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(path, f"cannot import module {name!r} ({e})", received,
                          "modules importable in this environment (module_file / "
                          "PYTHONPATH)", "install or ship the module, or fix the "
                          "name") from None
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(path, f"importing module {name!r} raised {type(e).__name__}: "
                          f"{error_summary(e)}", received,
                          "a module that imports without error",
                          f'fix the module (`python -c "import {name}"` shows the '
                          "traceback)") from None


def call_user_function(fn: Callable, model: Any, path: str, spec: str, what: str,
                       allowed: str) -> Any:
    """`fn(model)` for a function the config names (a factory, a `track` builder).

    Its failure is the user's code failing, not this program: a `ConfigError` at
    `path` naming `spec` (``module:attr``), instead of our traceback.
    """
    try:
        return fn(model)
    except InputError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        module_name, attr = spec.split(":")
        raise ConfigError(path, f"the {what} {spec} raised {type(e).__name__}: "
                          f"{error_summary(e)}", spec, allowed,
                          f"fix {attr} in {module_name} (call it on the model in Python "
                          "to see the traceback)") from None


def resolve_model_path(path: str) -> str:
    """A TFX Model artifact keeps its SavedModel in Format-Serving/ (the layout
    tfx.utils.path_utils.serving_model_path reads); accept the artifact root too."""
    serving = os.path.join(path, "Format-Serving")
    return serving if tf.io.gfile.isdir(serving) else path


MODEL_KINDS = ("a .keras file (Keras 3), an .h5 file (Keras 2), a SavedModel directory, "
               "or a directory holding exactly one of those (a TFX Model artifact: its "
               "Format-Serving/)")


def find_model_file(path: str) -> str:
    """Resolves a path to the model inside it: the path itself, or a single model file in a directory."""
    if not tf.io.gfile.isdir(path):
        return path
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    names = _listdir(path)
    candidates = [n for n in names if n.endswith(KERAS_FILE_SUFFIXES + H5_SUFFIXES)]
    if len(candidates) == 1:
        return os.path.join(path, candidates[0])
    looked_for = "saved_model.pb, or exactly one *.keras / *.h5 file"
    found = ", ".join(sorted(names)[:20]) or "(empty directory)"
    raise SourceError(path, f"no model found: looked for {looked_for}", found,
                      MODEL_KINDS, "point --model / model= at the model itself"
                      if len(candidates) > 1 else "give the directory the Trainer wrote "
                      "its model to (Format-Serving/), or the model file")


# How to get a good copy of each format, for the `fix` of a corrupt file.
_RESAVE = {
    KERAS3: "re-save the model with model.save(\"model.keras\") under Keras 3, or copy "
            "it again if a transfer was cut short",
    TF_KERAS: "re-save the model with model.save(\"model.h5\") under tf_keras (Keras 2), "
              "or copy it again if a transfer was cut short",
    SAVED_MODEL: RESAVE_SAVED_MODEL,
}


def _read_head(path: str, size: int) -> bytes:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read(size)
    except (tf.errors.OpError, OSError) as e:
        raise _unreadable(path, e) from None


def _check_file(path: str, flavor: str) -> None:
    """Refuses an unreadable or empty model file before a loader misreports it
    (Keras says "File not found" for both)."""
    head = _read_head(path, 8)
    if not head:
        raise SourceError(path, "is empty (0 bytes)", allowed=MODEL_KINDS,
                          fix=_RESAVE[flavor])


def _check_keras_file(path: str) -> None:
    _check_file(path, KERAS3)
    try:
        with tf.io.gfile.GFile(path, "rb") as f, zipfile.ZipFile(f) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise SourceError(path, "is not a readable zip archive, so not a .keras file (it is "
                          f"truncated, or another format: {error_summary(e)})",
                          f"{tf.io.gfile.stat(path).length} bytes",
                          "a Keras 3 .keras zip holding config.json and model.weights.h5",
                          _RESAVE[KERAS3] + "; a Keras 2 model saved in HDF5 needs the "
                          ".h5 suffix") from None
    if "config.json" not in names:
        raise SourceError(path, "the .keras zip has no config.json, so the model's "
                          "architecture is missing", sorted(names)[:10],
                          "a Keras 3 .keras zip holding config.json and model.weights.h5",
                          _RESAVE[KERAS3])
    if not names & {"model.weights.h5", "model.weights.npz"}:
        raise SourceError(path, "the .keras zip has no model.weights.h5, so the weights "
                          "are missing", sorted(names)[:10],
                          "a Keras 3 .keras zip holding config.json and model.weights.h5",
                          _RESAVE[KERAS3])


def _check_h5_file(path: str) -> None:
    _check_file(path, TF_KERAS)
    # Every HDF5 file starts with this signature (at offset 0 unless it has a user
    # block, which Keras never writes). h5py's own error is "file signature not found".
    if _read_head(path, 8) != b"\x89HDF\r\n\x1a\n":
        raise SourceError(path, "is not an HDF5 file (no HDF5 signature at its start)",
                          f"{tf.io.gfile.stat(path).length} bytes",
                          "a Keras 2 model saved with model.save(\"model.h5\")",
                          _RESAVE[TF_KERAS] + "; a Keras 3 model needs the .keras suffix")


def _check_saved_model_dir(path: str) -> None:
    """The parts of a SavedModel that the loader misreports: saved_model.pb that
    is empty, truncated or not a SavedModel proto (OSError "Cannot parse file"), or
    one without MetaGraphs (a complaint about `tags=`), or one missing an asset."""
    check_saved_model_assets(path, check_saved_model_proto(path))


def missing_assets(path: str, proto=None) -> List[str]:
    """The assets the SavedModel's `serve` graph reads that are not in its assets/."""
    if proto is None:
        proto = check_saved_model_proto(path)
    meta_graph = find_serve_meta_graph(proto)
    return [asset.filename for asset in (meta_graph.asset_file_def if meta_graph else ())
            if not tf.io.gfile.exists(os.path.join(path, "assets", asset.filename))]


def check_saved_model_assets(path: str, proto=None) -> None:
    """Refuses a SavedModel whose graph reads an asset (a vocabulary file) that is
    missing from its assets/ (TF says only "Graph execution error" while loading)."""
    missing = missing_assets(path, proto)
    if missing:
        raise SourceError(os.path.join(path, "assets", missing[0]),
                          f"is missing: the SavedModel's graph reads it (assets/ lacks "
                          f"{', '.join(missing)})", allowed="a complete SavedModel, with "
                          "every asset its graph reads", fix=_RESAVE[SAVED_MODEL])


def check_saved_model_variables(path: str) -> None:
    """Refuses a SavedModel whose variables/ files are corrupt or truncated, naming
    the file: variables.index that does not parse, a variables.data-* shard shorter
    than the index says, or whose bytes fail their checksums. Every tensor is read
    (TensorFlow checks each one's CRC32C), so this costs one read of the weights.
    A SavedModel without variables.index is left to the loader (it may have none)."""
    directory = os.path.join(path, "variables")
    index = os.path.join(directory, "variables.index")
    if not tf.io.gfile.exists(index):
        return
    shards = sorted(tf.io.gfile.glob(os.path.join(directory, "variables.data-*")))
    damaged = shards[0] if len(shards) == 1 else os.path.join(directory, "variables.data-*")
    try:
        reader = tf.train.load_checkpoint(os.path.join(directory, "variables"))
        dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        raise SourceError(index, "its variables are corrupt: variables.index is damaged or "
                          f"truncated ({type(e).__name__}: {error_summary(e)})",
                          f"{tf.io.gfile.stat(index).length} bytes",
                          "a complete SavedModel (variables.index and every "
                          "variables.data-* shard)", _RESAVE[SAVED_MODEL]) from None
    size = sum(tf.io.gfile.stat(s).length for s in shards)
    # Bytes of each tensor (a string's size is 0: its length is in the data, not the index).
    nbytes = {name: int(np.prod(shapes[name], dtype=np.int64)) * dtype.size
              for name, dtype in dtypes.items()}
    needed = sum(nbytes.values())
    if size < needed:
        raise SourceError(damaged, f"its variables are truncated: {size} bytes of data "
                          f"where variables.index lists at least {needed}", f"{size} bytes",
                          "a complete SavedModel (variables.index and every "
                          "variables.data-* shard)", _RESAVE[SAVED_MODEL])
    free = memory.available_bytes()
    for name in dtypes:
        if free is not None and nbytes[name] > free // 2:
            # Reading it back needs its size in memory once more: on a machine that
            # holds the model with little to spare, that fails (or the kernel kills
            # us) though the file is sound. The loader checks its checksum anyway.
            continue
        try:
            reader.get_tensor(name)
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError, MemoryError) as e:
            if "Dtype" in str(e) and "not supported" in str(e):
                # The reader's limit, not damage: TF reads no float16 tensor that a
                # sharded save split in pieces ("Dtype half not supported").
                continue
            if _out_of_memory(e):
                raise SourceError(
                    damaged, f"the variable {name!r} ({memory.format_bytes(nbytes[name])}) could "
                    "not be read back: the machine ran out of memory "
                    f"({type(e).__name__}: {error_summary(e)}); the file may well be sound",
                    allowed="a machine with free memory for the model and one more copy "
                    "of its largest variable", fix="run on a machine with more free memory "
                    "(a bigger Vertex / KFP machine type), or stop what else is running "
                    "there") from None
            raise SourceError(damaged, f"its variables are corrupt: the variable {name!r} "
                              f"does not read back ({type(e).__name__}: {error_summary(e)})",
                              allowed="a complete SavedModel (variables.index and every "
                              "variables.data-* shard)", fix=_RESAVE[SAVED_MODEL]) from None


def _out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: TensorFlow's own, Python's, or a read the kernel could
    not fault pages in for (EFAULT, "Bad address", seen at 8 GiB with little free)."""
    return (isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError))
            or "Bad address" in str(error))


def load(path: str, config: ExportConfig) -> ModelSource:
    """Loads a model from a path (see module docstring for what is understood).

    Everything wrong with the file (empty, truncated, unreadable, another format,
    corrupt variables, unsafe or unregistered layers) raises `SourceError` naming
    the file, what was found and how to get a good copy; none of it is a traceback.
    """
    if not tf.io.gfile.exists(path):
        raise SourceError(path, "does not exist", allowed=MODEL_KINDS,
                          fix="check the path (a TFX Trainer writes its model to the "
                              "Model artifact's Format-Serving/)")
    import_modules(config)
    model_path = find_model_file(path)
    safe_mode = not config.allow_unsafe_deserialization
    if model_path.endswith(KERAS_FILE_SUFFIXES):
        flavor = KERAS3
        _check_keras_file(model_path)
    elif model_path.endswith(H5_SUFFIXES):
        flavor = TF_KERAS
        _check_h5_file(model_path)
    elif tf.io.gfile.isdir(model_path):
        flavor = SAVED_MODEL
        _check_saved_model_dir(model_path)
    else:
        raise SourceError(model_path, "is not a model: a file without a .keras, .h5 or "
                          ".hdf5 suffix", os.path.basename(model_path), MODEL_KINDS,
                          "give the model file or SavedModel directory (rename a Keras "
                          "file to its format's suffix)")
    keras2_dir = flavor == SAVED_MODEL and tf.io.gfile.exists(
        os.path.join(model_path, "keras_metadata.pb"))
    if safe_mode and (flavor == TF_KERAS or keras2_dir):
        _refuse_python_bytecode(model_path)
    try:
        if flavor == KERAS3:
            import keras   # optional: the flavor's Keras only
            # Big tables are streamed from the file into the variables: one copy in
            # memory instead of four or five (keras_weights.py).
            with keras_weights.lean_weights(model_path):
                model = keras.saving.load_model(model_path, safe_mode=safe_mode)
            return ModelSource(model, KERAS3, model_path)
        if flavor == TF_KERAS or keras2_dir:
            import tf_keras   # optional: the flavor's Keras only
            # Big tables are restored from the checkpoint slice by slice into variables
            # that start unwritten: one copy in memory instead of 2-3 (checkpoint_weights.py).
            with checkpoint_weights.lean_restore(tf_keras_layers=flavor == SAVED_MODEL):
                model = tf_keras.models.load_model(model_path, safe_mode=safe_mode)
            if not _is_tf_keras(model):
                # A damaged keras_metadata.pb can parse partly: tf_keras then revives
                # a plain object without the model's layers or call.
                raise SourceError(
                    model_path, "keras_metadata.pb is damaged: tf_keras restored a "
                    f"{type(model).__name__}, not a Keras model", allowed="a complete "
                    "Keras 2 SavedModel", fix=_RESAVE[SAVED_MODEL] + "; or delete "
                    "keras_metadata.pb to export it as a plain SavedModel")
            return ModelSource(model, TF_KERAS, model_path)
        with checkpoint_weights.lean_restore():
            return ModelSource(tf.saved_model.load(model_path), SAVED_MODEL, model_path)
    except ValueError as e:
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise SourceError(
                model_path, "loading it needs unsafe deserialization: it holds Python code "
                f"(a Lambda layer or function) that would run while loading ({error_summary(e)})",
                fix="if you trust this model, set \"allow_unsafe_deserialization\": true "
                    "in the export config") from None
        raise _cannot_load(model_path, flavor, e) from None
    except TypeError as e:
        raise SourceError(
            model_path, f"cannot be loaded: {error_summary(e)}",
            fix="if it uses custom layers, list the module that registers them in "
                "\"import_modules\"") from None
    except (OSError, KeyError, EOFError, RuntimeError, IndexError, zipfile.BadZipFile,
            tf.errors.OpError) as e:
        # What a damaged file makes the loaders raise: h5py/zip OSError and KeyError,
        # zipfile's BadZipFile (a weights member whose CRC-32 fails),
        # TensorFlow's DataLossError (corrupt variables) and FileNotFoundError (missing
        # variables/), IndexError ("Read less bytes than requested": a truncated
        # variables.data shard), protobuf's parse errors. The file is at fault, not
        # this program.
        raise _cannot_load(model_path, flavor, e) from None


def _refuse_python_bytecode(model_path: str) -> None:
    """Refuses a Keras 2 model holding a Lambda layer's Python bytecode.

    tf_keras 2.16 honours `safe_mode` only for `.keras` files: from an `.h5` file
    or a Keras 2 SavedModel it unmarshals a Lambda layer's function and runs it
    while rebuilding the model, whatever `safe_mode` says (tests/faults/
    test_safe_mode.py shows the marker file it writes). So the model config is
    read here first, and such a layer needs the same opt-in as in a .keras file.
    Configs that cannot be read are left to the loader, which reports them.
    """
    for config in _tf_keras_configs(model_path):
        for layer in _walk_dicts(config):
            lambda_fields = [k for k in ("function_type", "output_shape_type")
                             if layer.get(k) == "lambda"]
            if lambda_fields:
                name = layer.get("name") or (layer.get("config") or {}).get("name")
                raise SourceError(
                    model_path, f"loading it would run Python code: the Lambda layer "
                    f"{name!r} holds Python bytecode ({lambda_fields[0]}: lambda), which "
                    "tf_keras executes while loading an .h5 file or Keras 2 SavedModel, "
                    "even in safe mode", allowed="models without Python bytecode, unless "
                    "the config opts in",
                    fix="if you trust this model, set \"allow_unsafe_deserialization\": "
                        "true in the export config; otherwise replace the Lambda layer by a "
                        "registered custom layer (see \"import_modules\")")


def _tf_keras_configs(model_path: str) -> List[Any]:
    try:
        if model_path.endswith(H5_SUFFIXES):
            import h5py   # tf_keras's HDF5 reader: optional, as tf_keras is
            with tf.io.gfile.GFile(model_path, "rb") as f, h5py.File(f, "r") as h5:
                raw = h5.attrs.get("model_config")
            raw = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            return [json.loads(raw)] if raw else []
        from tf_keras.protobuf import saved_metadata_pb2   # tf_keras: optional
        metadata = saved_metadata_pb2.SavedMetadata()
        with tf.io.gfile.GFile(os.path.join(model_path, "keras_metadata.pb"), "rb") as f:
            metadata.ParseFromString(f.read())
        return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    except Exception:  # pylint: disable=broad-except
        return []   # unreadable: the loader's own error says so (see `load`)


def _walk_dicts(value: Any):
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _cannot_load(model_path: str, flavor: str, error: BaseException) -> SourceError:
    text = error_summary(error)
    if flavor == SAVED_MODEL or tf.io.gfile.isdir(model_path):
        check_saved_model_variables(model_path)   # names the damaged file, if it can
        if "TensorSliceReader" in text or "variables" in text.lower():
            problem = "its variables are missing or incomplete (variables/ must hold " \
                      "variables.index and every variables.data-* shard)"
        elif isinstance(error, tf.errors.OpError):
            problem = "its variables are corrupt"
        else:
            problem = "cannot be loaded"
        return SourceError(model_path, f"{problem}: {type(error).__name__}: {text}",
                           allowed="a complete SavedModel", fix=_RESAVE[SAVED_MODEL])
    hint = ("; if it uses custom layers, list the module that registers them in "
            "\"import_modules\"" if "deserialize" in text or "Unknown" in text else "")
    return SourceError(model_path, f"cannot be loaded: it is damaged or not a model of "
                       f"its format ({type(error).__name__}: {text})",
                       fix=_RESAVE[flavor] + hint)
