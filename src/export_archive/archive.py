"""ExportArchive variants that store every weight once and honour `serving_default`.

Why these subclasses exist:

* **One variable per weight.** With the TensorFlow backend, a Keras 3
  `keras.Variable` is a trackable *wrapper* around a `tf.Variable`. Keras 3's
  `ExportArchive.track()` puts the wrappers into the saved `variables` lists,
  while `_filter_and_track_resources()` puts the `tf.Variable`s that the
  endpoints captured into `_all_variables`. The checkpoint then reaches each
  weight along two paths, as two different objects, and saves it twice; and the
  wrapper's `_export_to_saved_model_graph` creates a fresh `tf.Variable` for
  itself, so the serving graph holds extra variable handles too. We put the
  underlying `tf.Variable` in every list we save, so both paths lead to one
  object. tf_keras models have no wrapper and are unaffected.
* **`serving_default` by config.** The stock `write_out` always aliases the
  first endpoint; the config may name another one.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import tensorflow as tf


def unwrap_variable(variable: Any) -> Any:
    """Returns the `tf.Variable` behind a Keras 3 variable (itself otherwise)."""
    inner = getattr(variable, "value", None)
    if isinstance(inner, tf.Variable) and not isinstance(variable, tf.Variable):
        return inner
    return variable


def unwrap_variables(variables: Iterable[Any]) -> List[Any]:
    return [unwrap_variable(v) for v in variables]


class _ArchiveMixin:
    """Shared by the Keras 3 and tf_keras archives; see the module docstring."""

    def _trackable_root(self):
        raise NotImplementedError

    def add_variable_collection(self, name, variables):
        super().add_variable_collection(name, unwrap_variables(variables))

    def concrete_endpoint(self, name: str):
        return self._get_concrete_fn(name)

    def attach(self, name: str, trackable) -> None:
        """Saves `trackable` (e.g. a Transform layer with its tables and assets) as a
        child of the SavedModel root, reachable on reload as an attribute."""
        setattr(self._trackable_root(), name, trackable)

    def write_out(self, filepath, options=None, serving_default: Optional[str] = None,
                  method_names: Optional[Dict[str, str]] = None, **unused):
        if not self._endpoint_names:
            raise ValueError("No endpoints have been set yet. Call add_endpoint().")
        self._filter_and_track_resources()
        signatures: Dict[str, Any] = {
            name: self._get_concrete_fn(name) for name in self._endpoint_names}
        if "serving_default" not in signatures:
            # TF Serving calls `serving_default` when a request names no signature.
            signatures["serving_default"] = signatures[serving_default or self._endpoint_names[0]]
        tf.saved_model.save(self._trackable_root(), filepath, options=options,
                            signatures=signatures)
        if method_names:
            aliased = serving_default or self._endpoint_names[0]
            if "serving_default" not in self._endpoint_names and aliased in method_names:
                method_names = {**method_names, "serving_default": method_names[aliased]}
            set_method_names(filepath, method_names)


def set_method_names(export_dir: str, method_names: Dict[str, str]) -> None:
    """Sets signature method names (classify/regress) in a freshly written SavedModel.

    TF2 saving writes every signature as `tensorflow/serving/predict`; TF Serving's
    Classify and Regress APIs only accept signatures with their own method name.
    Called on the staging directory, before the export becomes visible.
    """
    from export_archive import describe
    proto = describe.read_saved_model_proto(export_dir)
    meta_graph = describe.serve_meta_graph(proto)
    for name, method in method_names.items():
        meta_graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(f"{export_dir}/saved_model.pb", "wb") as f:
        f.write(proto.SerializeToString())
    # fingerprint.pb holds a checksum of saved_model.pb: recompute it the way
    # tf.saved_model.save does, so loaders that read it see a consistent model.
    from tensorflow.python.saved_model import fingerprinting_utils
    fingerprinting_utils.write_fingerprint(export_dir)


def _keras3_archive_class():
    import keras

    class Keras3ExportArchive(_ArchiveMixin, keras.export.ExportArchive):
        """Keras 3 `ExportArchive` saving each weight once (module docstring)."""

        def _trackable_root(self):
            return self._tf_trackable

        def _track_layer(self, layer):
            # The stock version appends keras.Variable wrappers: see module docstring.
            root = self._tf_trackable
            root.variables += unwrap_variables(layer.variables)
            root.trainable_variables += unwrap_variables(layer.trainable_variables)
            root.non_trainable_variables += unwrap_variables(layer.non_trainable_variables)

    return Keras3ExportArchive


def _tf_keras_archive_class():
    import tf_keras

    class TfKerasExportArchive(_ArchiveMixin, tf_keras.export.ExportArchive):
        """tf_keras `ExportArchive` with `serving_default` chosen by config."""

        def _trackable_root(self):
            return self

    return TfKerasExportArchive


_CLASSES: Dict[str, Any] = {}


def archive_class(flavor: str):
    """The ExportArchive class for a model flavor: ``keras3``, ``tf_keras`` or ``saved_model``."""
    key = "tf_keras" if flavor == "tf_keras" else "keras3"
    if key not in _CLASSES:
        _CLASSES[key] = _tf_keras_archive_class() if key == "tf_keras" else _keras3_archive_class()
    return _CLASSES[key]
