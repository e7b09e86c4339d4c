"""ExportArchive variants that store every weight once and honour `serving_default`.

Our archives *wrap* a stock ExportArchive (Keras 3's `keras.export.ExportArchive`
or tf_keras's `tf_keras.export.ExportArchive`) instead of subclassing it, because
the stock classes are not stable to subclass: since Keras 3.14,
`keras.export.ExportArchive()` is a factory whose `__new__` returns a
backend-specific instance (so a subclass's own methods are lost), and the
private members an override would replace (`_track_layer`, `_print_signature`)
moved. What we add on top:

* **One variable per weight.** With the TensorFlow backend, a Keras 3
  `keras.Variable` is a trackable *wrapper* around a `tf.Variable`. The stock
  `track()` puts the wrappers into the saved `variables` lists, while the
  endpoints capture the `tf.Variable`s. The checkpoint then reaches each weight
  along two paths, as two different objects, and saves it twice; and the
  wrapper's `_export_to_saved_model_graph` creates a fresh `tf.Variable` for
  itself, so the serving graph holds extra variable handles too. After each
  stock `track()` / `add_variable_collection()` we put the underlying
  `tf.Variable` in every saved list, so both paths lead to one object. tf_keras
  models have no wrapper and are unaffected.
* **`serving_default` by config.** The stock `write_out` always aliases the
  first endpoint; the config may name another one (`write_out(...,
  serving_default=NAME)`), and may set classify/regress method names.

Everything else is the stock object's: public calls are forwarded, and so is any
other attribute (e.g. a reloaded endpoint, or the stock `_tf_trackable` that
Keras's own tests read). The few private members of the stock object our extras
need (the endpoint list, its concrete functions, the saved root and the
resource filter run before saving) are read in one place, `_StockInternals`,
which Keras's own ExportArchive test suite and ours check on every Keras in the
lanes (tests/integration/test_keras_export_suite.py).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, List, Optional

import tensorflow as tf
from absl import logging

from export_archive import saved_model_io
from export_archive.constants import DEFAULT_SIGNATURE


def unwrap_variable(variable: Any) -> Any:
    """Returns the `tf.Variable` behind a Keras 3 variable (itself otherwise)."""
    inner = getattr(variable, "value", None)
    if isinstance(inner, tf.Variable) and not isinstance(variable, tf.Variable):
        return inner
    return variable


def unwrap_variables(variables: Iterable[Any]) -> List[Any]:
    return [unwrap_variable(v) for v in variables]


class _StockInternals:
    """The private members of a stock ExportArchive that `write_out`'s extras need.

    Keras has no public hook for them: the extras save the same root with a
    signature map of our own, so they need the root, the endpoint names, each
    endpoint's concrete function and the stock resource filter (it collects the
    variables and lookup tables the endpoints use before saving). They have kept
    these names from Keras 3.3 to 3.15 and tf_keras 2.15 to 2.21; if a release
    renames one, this is the one place to adapt (with a version check), and
    `check()` names what is missing instead of failing deep inside a save.
    """

    NAMES = ("_endpoint_names", "_get_concrete_fn", "_filter_and_track_resources")

    def __init__(self, stock, root_attribute: Optional[str]):
        self._stock = stock
        self._root_attribute = root_attribute
        missing = [n for n in self.NAMES + ((root_attribute,) if root_attribute else ())
                   if not hasattr(stock, n)]
        if missing:
            raise RuntimeError(
                f"{type(stock).__module__}.{type(stock).__name__} lacks {missing}, which "
                "export_archive.archive reads; this Keras version is not supported yet "
                "(supported: keras 3.12-3.15, tf_keras 2.16-2.21).")

    @property
    def root(self):
        """The trackable `write_out` saves (tf_keras: the archive itself)."""
        return getattr(self._stock, self._root_attribute) if self._root_attribute \
            else self._stock

    @property
    def endpoint_names(self) -> List[str]:
        return list(self._stock._endpoint_names)

    def concrete_fn(self, name: str):
        return self._stock._get_concrete_fn(name)

    def prepare_save(self) -> None:
        self._stock._filter_and_track_resources()


class _ArchiveBase:
    """Shared by the Keras 3 and tf_keras archives; see the module docstring.

    The public methods keep the stock signatures and errors: Keras's own
    ExportArchive test suite runs against these classes as well as the stock
    ones (tests/integration/test_keras_export_suite.py).
    """

    # Set by the per-flavor subclasses below.
    _stock_factory: Callable[[], Any]
    _root_attribute: Optional[str] = None

    def __init__(self):
        # Through object.__setattr__: `__setattr__` below forwards to the stock.
        stock = type(self)._stock_factory()
        object.__setattr__(self, "_stock", stock)
        object.__setattr__(self, "_internals", _StockInternals(stock, self._root_attribute))

    # -- forwarding: the stock object is the archive; we only add to it

    def __getattr__(self, name):
        # Only called for what this class lacks: endpoints reloaded as
        # attributes, `variables`, the stock's own members.
        return getattr(object.__getattribute__(self, "_stock"), name)

    def __setattr__(self, name, value):
        setattr(self._stock, name, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapping {self._stock!r}>"

    @property
    def stock(self):
        """The stock ExportArchive this one fills (public API, e.g. to pass on)."""
        return self._stock

    def _trackable_root(self):
        return self._internals.root

    def track(self, resource):
        result = self._stock.track(resource)
        self._unwrap_saved_variables()
        return result

    def add_endpoint(self, name, fn, input_signature=None, **kwargs):
        return self._stock.add_endpoint(name, fn, input_signature, **kwargs)

    def track_and_add_endpoint(self, name, resource, input_signature, **kwargs):
        # Not forwarded: the stock method calls the stock `track`, which would
        # skip the unwrapping in ours.
        self.track(resource)
        return self.add_endpoint(name, resource.__call__, input_signature, **kwargs)

    def add_variable_collection(self, name, variables):
        # The stock method validates first: the container (a list/tuple/set, so
        # a single Variable, a dict or a generator gets its error) and then the
        # elements. Unwrapping before it would iterate the argument, turning a
        # dict into its keys and a generator into an accepted list. So let it
        # validate and store `list(variables)`, then swap the stored Keras 3
        # wrappers for their tf.Variables (module docstring).
        self._stock.add_variable_collection(name, variables)
        root = self._internals.root
        setattr(root, name, unwrap_variables(getattr(root, name)))

    def _unwrap_saved_variables(self) -> None:
        root = self._internals.root
        for attribute in ("variables", "trainable_variables", "non_trainable_variables"):
            stored = getattr(root, attribute, None)
            if stored is None:
                continue
            unwrapped = unwrap_variables(stored)
            if any(a is not b for a, b in zip(unwrapped, stored)):
                # A new list, not an in-place edit: TF refuses to save a tracked
                # list whose items were replaced.
                setattr(root, attribute, unwrapped)

    def concrete_endpoint(self, name: str):
        return self._internals.concrete_fn(name)

    def attach(self, name: str, trackable) -> None:
        """Saves `trackable` (e.g. a Transform layer with its tables and assets) as a
        child of the SavedModel root, reachable on reload as an attribute."""
        setattr(self._internals.root, name, trackable)

    def write_out(self, filepath, options=None, verbose=True, *,
                  serving_default: Optional[str] = None,
                  method_names: Optional[Dict[str, str]] = None,
                  signature_functions: Optional[Dict[str, Any]] = None):
        """The stock `write_out`, plus three keyword-only extras.

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
        internals = self._internals
        endpoint_names = internals.endpoint_names
        if not endpoint_names:
            raise ValueError("No endpoints have been set yet. Call add_endpoint().")
        # Arguments are checked before anything is traced or written, so a bad
        # one leaves nothing on disk.
        aliased = _serving_default_endpoint(endpoint_names, serving_default)
        method_names = _checked_method_names(
            method_names, list(dict.fromkeys(endpoint_names + [DEFAULT_SIGNATURE])))
        if aliased != DEFAULT_SIGNATURE and aliased in method_names:
            # The alias is the same function, so it takes the same method.
            method_names[DEFAULT_SIGNATURE] = method_names[aliased]
        signature_functions = dict(signature_functions or {})
        unknown = sorted(set(signature_functions) - set(endpoint_names))
        if unknown:
            raise ValueError(f"write_out(signature_functions=...): {unknown} are not "
                             f"endpoints. Allowed: {endpoint_names}.")
        internals.prepare_save()
        signatures: Dict[str, Any] = {
            name: signature_functions.get(name) or internals.concrete_fn(name)
            for name in endpoint_names}
        # TF Serving calls `serving_default` when a request names no signature.
        signatures.setdefault(DEFAULT_SIGNATURE, signatures[aliased])
        tf.saved_model.save(internals.root, filepath, options=options,
                            signatures=signatures)
        if method_names:
            set_method_names(filepath, method_names)
        if verbose:
            self._print_msg(_endpoints_summary(
                filepath, {name: internals.concrete_fn(name) for name in endpoint_names},
                verbose))

    @staticmethod
    def _print_msg(message: str) -> None:
        raise NotImplementedError


def _serving_default_endpoint(names: List[str], requested: Optional[str]) -> str:
    if DEFAULT_SIGNATURE in names:
        if requested in (None, DEFAULT_SIGNATURE):
            return DEFAULT_SIGNATURE
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


def _endpoints_summary(filepath, concrete_fns: Dict[str, Any], verbose) -> str:
    """The stock summary text, built from TF's public `pretty_printed_signature`
    the way both stock printers build it (test_keras_export_suite.py compares the
    two texts)."""
    blocks = []
    for name, fn in concrete_fns.items():
        if hasattr(fn, "get_concrete_function"):   # a tf.function with a signature
            fn = fn.get_concrete_function()
        lines = fn.pretty_printed_signature(verbose=bool(verbose)).split("\n")
        blocks.append("\n".join([f"* Endpoint '{name}'"] + lines[1:]))
    endpoints = "\n\n".join(blocks)
    return (f"Saved artifact at '{filepath}'. The following endpoints are available:"
            f"\n\n{endpoints}")


def _print_via(interactive: Callable[[], bool], message: str) -> None:
    """What the stock printers do: stdout while Keras's interactive logging is on
    (the default), absl logging otherwise."""
    if interactive():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logging.info(message)


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
    proto = saved_model_io.read_saved_model_proto(export_dir)
    meta_graph = saved_model_io.serve_meta_graph(proto)
    for name, method in method_names.items():
        meta_graph.signature_def[name].method_name = method
    saved_model_io.write_saved_model_proto(export_dir, proto)   # and its fingerprint


def _keras3_archive_class():
    # Keras 3 or tf_keras, whichever the model is: either may be missing.
    import keras

    class Keras3ExportArchive(_ArchiveBase):
        """Keras 3 `ExportArchive` saving each weight once (module docstring)."""

        # Bound now, not looked up per call: Keras's suite rebinds
        # `keras.export.ExportArchive` to this class (tests/keras_suite).
        _stock_factory = keras.export.ExportArchive
        _root_attribute = "_tf_trackable"

        @staticmethod
        def _print_msg(message: str) -> None:
            _print_via(keras.config.is_interactive_logging_enabled, message)

    return Keras3ExportArchive


def _tf_keras_archive_class():
    # Keras 3 or tf_keras, whichever the model is: either may be missing.
    import tf_keras

    class TfKerasExportArchive(_ArchiveBase):
        """tf_keras `ExportArchive` with `serving_default` chosen by config."""

        _stock_factory = tf_keras.export.ExportArchive
        _root_attribute = None   # the tf_keras archive is itself the saved root

        @staticmethod
        def _print_msg(message: str) -> None:
            _print_via(tf_keras.utils.is_interactive_logging_enabled, message)

    return TfKerasExportArchive


_CLASSES: Dict[str, Any] = {}


def archive_class(flavor: str):
    """The ExportArchive class for a model flavor: ``keras3``, ``tf_keras`` or ``saved_model``."""
    key = "tf_keras" if flavor == "tf_keras" else "keras3"
    if key not in _CLASSES:
        _CLASSES[key] = _tf_keras_archive_class() if key == "tf_keras" else _keras3_archive_class()
    return _CLASSES[key]
