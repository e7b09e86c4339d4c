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
  first endpoint; the config may name another one (`write_out(...,
  serving_default=NAME)`), and may set classify/regress method names.

Otherwise they behave as the stock classes: same signatures (our extras are
keyword-only), same errors, same printed summary. Keras's own ExportArchive
test suite runs against them in tests/integration/test_keras_export_suite.py.
"""

from __future__ import annotations

import functools
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
    """Shared by the Keras 3 and tf_keras archives; see the module docstring.

    The public methods keep the stock signatures and errors: Keras's own
    ExportArchive test suite runs against these classes as well as the stock
    ones (tests/integration/test_keras_export_suite.py).
    """

    def _trackable_root(self):
        raise NotImplementedError

    def _stock_printers(self, verbose):
        """The stock module's (print_signature(fn, name), print_msg) for the summary."""
        raise NotImplementedError

    def add_variable_collection(self, name, variables):
        # The stock method validates first: the container (a list/tuple/set, so
        # a single Variable, a dict or a generator gets its error) and then the
        # elements. Unwrapping before it would iterate the argument, turning a
        # dict into its keys and a generator into an accepted list. So let it
        # validate and store `list(variables)`, then swap the stored Keras 3
        # wrappers for their tf.Variables (module docstring).
        super().add_variable_collection(name, variables)
        root = self._trackable_root()
        setattr(root, name, unwrap_variables(getattr(root, name)))

    def concrete_endpoint(self, name: str):
        return self._get_concrete_fn(name)

    def attach(self, name: str, trackable) -> None:
        """Saves `trackable` (e.g. a Transform layer with its tables and assets) as a
        child of the SavedModel root, reachable on reload as an attribute."""
        setattr(self._trackable_root(), name, trackable)

    def write_out(self, filepath, options=None, verbose=True, *,
                  serving_default: Optional[str] = None,
                  method_names: Optional[Dict[str, str]] = None,
                  signature_functions: Optional[Dict[str, Any]] = None):
        """The stock `write_out`, plus two keyword-only extras.

        Args:
          filepath, options, verbose: as in the stock method. `verbose` prints
            the stock summary of the endpoints (tf_keras's stock method has no
            `verbose` and always prints; here it defaults to printing too).
          serving_default: the endpoint aliased as ``serving_default`` (the
            signature TF Serving calls when a request names none). None: the
            stock rule, the first endpoint unless one is named ``serving_default``.
          method_names: signature name -> SignatureDef method name, e.g.
            ``{"classify": tf.saved_model.CLASSIFY_METHOD_NAME}``.
          signature_functions: endpoint name -> the concrete function to save as
            its *signature* instead of the endpoint function itself (e.g. one whose
            outputs carry the model's names); the endpoint method is unchanged.
        """
        if not self._endpoint_names:
            raise ValueError("No endpoints have been set yet. Call add_endpoint().")
        # Arguments are checked before anything is traced or written, so a bad
        # one leaves nothing on disk.
        aliased = self._serving_default_endpoint(serving_default)
        method_names = _checked_method_names(
            method_names, list(dict.fromkeys(self._endpoint_names + ["serving_default"])))
        if aliased != "serving_default" and aliased in method_names:
            # The alias is the same function, so it takes the same method.
            method_names["serving_default"] = method_names[aliased]
        self._filter_and_track_resources()
        signature_functions = dict(signature_functions or {})
        unknown = sorted(set(signature_functions) - set(self._endpoint_names))
        if unknown:
            raise ValueError(f"write_out(signature_functions=...): {unknown} are not "
                             f"endpoints. Allowed: {self._endpoint_names}.")
        signatures: Dict[str, Any] = {
            name: signature_functions.get(name) or self._get_concrete_fn(name)
            for name in self._endpoint_names}
        # TF Serving calls `serving_default` when a request names no signature.
        signatures.setdefault("serving_default", signatures[aliased])
        tf.saved_model.save(self._trackable_root(), filepath, options=options,
                            signatures=signatures)
        if method_names:
            set_method_names(filepath, method_names)
        if verbose:
            self._print_endpoints(filepath, verbose)

    def _serving_default_endpoint(self, requested: Optional[str]) -> str:
        names = self._endpoint_names
        if "serving_default" in names:
            if requested in (None, "serving_default"):
                return "serving_default"
            raise ValueError(
                f"write_out(serving_default={requested!r}): an endpoint is already named "
                f"'serving_default', so it is the default signature. Allowed: "
                f"'serving_default' or None. Fix: rename that endpoint, or omit "
                f"serving_default.")
        if requested is None:
            return names[0]
        if requested not in names:
            raise ValueError(
                f"write_out(serving_default={requested!r}): no endpoint has that name. "
                f"Allowed: {', '.join(repr(n) for n in names)}. Fix: pass the name of an "
                f"endpoint added with add_endpoint(), or omit serving_default to alias "
                f"the first endpoint ({names[0]!r}).")
        return requested

    def _print_endpoints(self, filepath, verbose) -> None:
        # The stock text, built with the stock (private) helpers so it stays the
        # same text; test_keras_export_suite.py compares it with the stock
        # output. Their print_msg honours Keras's interactive-logging switch
        # (stdout, or absl logging when it is off).
        print_signature, print_msg = self._stock_printers(verbose)
        root = self._trackable_root()
        endpoints = "\n\n".join(
            print_signature(getattr(root, name), name) for name in self._endpoint_names)
        print_msg(f"Saved artifact at '{filepath}'. "
                  "The following endpoints are available:\n\n"
                  f"{endpoints}")


_METHOD_NAMES = (tf.saved_model.PREDICT_METHOD_NAME, tf.saved_model.CLASSIFY_METHOD_NAME,
                 tf.saved_model.REGRESS_METHOD_NAME)


def _checked_method_names(method_names: Optional[Dict[str, str]],
                          signature_names: List[str]) -> Dict[str, str]:
    """A copy of `method_names`, refused if it names an unknown signature or method.

    Setting a method on a name the SavedModel lacks would add an empty, broken
    SignatureDef (protobuf maps create missing keys).
    """
    method_names = dict(method_names or {})
    for name, method in method_names.items():
        if name not in signature_names:
            raise ValueError(
                f"write_out(method_names={{{name!r}: ...}}): no signature has that name. "
                f"Allowed: {', '.join(repr(n) for n in signature_names)}. "
                f"Fix: use the name of an endpoint.")
        if method not in _METHOD_NAMES:
            raise ValueError(
                f"write_out(method_names={{{name!r}: {method!r}}}): unknown method name. "
                f"Allowed: {', '.join(repr(m) for m in _METHOD_NAMES)}. "
                f"Fix: use a tf.saved_model.*_METHOD_NAME constant.")
    return method_names


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

        def _stock_printers(self, verbose):
            from keras.src.export.saved_model import _print_signature
            from keras.src.utils import io_utils
            return functools.partial(_print_signature, verbose=verbose), io_utils.print_msg

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

        def _stock_printers(self, verbose):
            from tf_keras.src.export.export_lib import _print_signature
            from tf_keras.src.utils import io_utils
            return _print_signature, io_utils.print_msg

    return TfKerasExportArchive


_CLASSES: Dict[str, Any] = {}


def archive_class(flavor: str):
    """The ExportArchive class for a model flavor: ``keras3``, ``tf_keras`` or ``saved_model``."""
    key = "tf_keras" if flavor == "tf_keras" else "keras3"
    if key not in _CLASSES:
        _CLASSES[key] = _tf_keras_archive_class() if key == "tf_keras" else _keras3_archive_class()
    return _CLASSES[key]
