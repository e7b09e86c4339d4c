"""What the serving functions touch is tracked, and what was asked for is written.

Keras's `ExportArchive` saves what it tracks: the model's variables and the lookup
tables of the objects passed to `track()`. An endpoint function that uses anything
else (a `StaticHashTable` a factory built, a `StringLookup` adapted outside the
model) makes `tf.saved_model.save` fail with a bare ``AssertionError: Tried to
export a function which references an 'untracked' resource``. This module

* resolves the config's ``track`` entries (``layer:NAME``, ``module.path:attr``)
  and the resources a factory returns beside its function into objects to track;
* checks, before anything is written, that every resource an endpoint's traced
  function captures is saved with the archive, and that no endpoint reads a file
  by a path outside the SavedModel (it would not travel with the model), raising
  `UntrackedResourceError` that names the endpoint, the resource and the fix;
* checks, after writing, that every variable collection holds what its source
  holds (count, shapes, values) and that every asset the graph reads is in
  ``assets/``.

Example (a factory returning the table its function uses, so it is tracked):

    def make_fn(model):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer([0, 1], [0.1, 0.9]), -1.0)
        fn = lambda x: table.lookup(tf.argmax(model(x), axis=1))
        return {"fn": fn, "input_signature": [tf.TensorSpec([None, 3])],
                "track": [table]}
"""

from __future__ import annotations

import gc
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from export_archive.config import TRACK_LAYER_PREFIX, ConfigError, ExportConfig
from export_archive.constants import DEFAULT_SIGNATURE
from export_archive.saved_model_io import read_serve_meta_graph, signature_defs
from export_archive.sources import (ModelSource, call_user_function, error_summary,
                                    import_user_module, missing_assets)

TRACK_FIX = ("list it in the config's \"track\" (\"module.path:attr\" naming the object, or "
             "a builder that returns it; \"layer:NAME\" for a layer of the model), return "
             "it from the factory beside the function ({\"fn\": fn, \"track\": [it]}), or "
             "build it in the model (as a layer or a layer's attribute)")


class UntrackedResourceError(ConfigError):
    """An endpoint's function uses a resource (a lookup table, a variable, a file)
    that would not be saved with the SavedModel."""


class LostVariablesError(ConfigError):
    """A variable collection would not hold what its source holds."""


# ---- what to track


def _is_trackable(obj: Any) -> bool:
    return isinstance(obj, tf.__internal__.tracking.Trackable)


def trackables(value: Any, path: str, what: str) -> List[Any]:
    """`value` (one trackable, or a list / tuple / dict of them) as a list."""
    items = list(value.values()) if isinstance(value, dict) else \
        list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not _is_trackable(item):
            raise ConfigError(path, f"{what} is not a TensorFlow trackable object",
                              type(item).__name__, "a lookup table, a Keras layer or model, "
                              "a tf.Module or a tf.Variable (or a list or dict of them)",
                              "return the table or layer itself, not a Python value")
    return items


def resolve_track(config: ExportConfig, source: ModelSource) -> List[Tuple[str, Any]]:
    """The config's `track` entries as (field path, object) pairs."""
    out = []
    for i, entry in enumerate(config.track):
        path = f"track[{i}]"
        if entry.startswith(TRACK_LAYER_PREFIX):
            out.append((path, find_layer(source, entry[len(TRACK_LAYER_PREFIX):], path,
                                         entry)))
            continue
        module_name, attr = entry.split(":")
        module = import_user_module(module_name, path, entry)
        if not hasattr(module, attr):
            raise ConfigError(path, f"module {module_name!r} has no attribute {attr!r}",
                              entry, "an object to track, or a builder taking the model",
                              f"define {attr} in {module_name}, or correct the name")
        obj = getattr(module, attr)
        if not _is_trackable(obj) and callable(obj):
            obj = call_user_function(obj, source.obj, path, entry, "builder",
                                     "a builder that takes the model and returns what to "
                                     "track")
        out.extend((path, o) for o in trackables(obj, path, entry))
    return out


def _walk_layers(model: Any) -> Iterable[Any]:
    stack, seen = list(getattr(model, "layers", None) or []), set()
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", None) or [])


def find_layer(source: ModelSource, name: str, path: str, received: str) -> Any:
    """The layer `name` of the model, nested models searched too."""
    layers = list(_walk_layers(source.obj))
    for layer in layers:
        if getattr(layer, "name", None) == name:
            return layer
    names = ", ".join(f"layer:{l.name}" for l in layers[:30]) or "(this source has no layers)"
    raise ConfigError(path, f"the model has no layer {name!r}", received, names,
                      "name an existing layer (model.summary() lists them)")


def track(export_archive, obj: Any, path: str) -> None:
    """`export_archive.track(obj)` (stock), its refusal as a ConfigError at `path`."""
    try:
        export_archive.track(obj)
    except ValueError as e:
        raise ConfigError(path, f"cannot be tracked: {error_summary(e).rstrip('.')}",
                          type(obj).__name__, "a built layer or model, or a TensorFlow "
                          "trackable object", "build (or adapt) the layer before "
                          "exporting") from None


# ---- what the endpoints capture


def saved_objects(roots: Sequence[Any]) -> set:
    """ids of every object reachable from `roots` (what the archive saves of them)."""
    ids = set()
    for root in roots:
        ids.add(id(root))
        ids.update(id(t) for t in tf.train.TrackableView(root).descendants())
    return ids


def check_captures(endpoint_functions: Dict[str, Tuple[str, Any]], roots: Sequence[Any]) -> None:
    """Refuses an endpoint whose traced function captures a resource that is not
    saved with the archive, or reads a file by a path outside the SavedModel.

    `endpoint_functions`: endpoint name -> (its config path, its ConcreteFunction).
    Variables are always fine: the archive saves every variable an endpoint uses.
    """
    saved = None
    for name, (where, concrete) in endpoint_functions.items():
        for exterior, _ in concrete.graph.captures:
            if getattr(exterior, "dtype", None) != tf.resource:
                continue
            if not hasattr(exterior, "_parent_trackable"):
                continue   # no owner recorded: the save's own check judges it
            owner = exterior._parent_trackable()  # pylint: disable=protected-access
            if isinstance(owner, tf.Variable):
                continue
            if saved is None:
                saved = saved_objects(roots)
            if owner is not None and id(owner) in saved:
                continue
            raise UntrackedResourceError(
                f"{where}.fn", f"the function of endpoint {name!r} uses "
                f"{describe_resource(owner, exterior)}, which nothing the archive tracks "
                "holds, so it would not be saved with the SavedModel (Keras: \"Tried to "
                "export a function which references an 'untracked' resource\")",
                allowed="resources of the model or of objects in \"track\"",
                fix=TRACK_FIX if owner is not None else "create it outside the function "
                "(in the factory, not while the function is traced) and " + TRACK_FIX)
        for filename in files_read_by_path(concrete):
            raise UntrackedResourceError(
                f"{where}.fn", f"the function of endpoint {name!r} reads the file "
                f"{filename!r} by its path, so the file is not saved in the SavedModel's "
                "assets/ and a server without that path fails", filename,
                "files read through a tracked lookup table (saved as an asset)",
                "build the table (e.g. tf.lookup.StaticHashTable with a "
                "TextFileInitializer) outside the function and " + TRACK_FIX)


def describe_resource(owner: Any, handle: Any = None) -> str:
    """`a StaticHashTable 'hash_table_...' (vocabulary file /x/vocab.txt) held by the
    layer 'string_lookup'`, as far as it can be known."""
    if owner is None:
        match = re.search(r'name="([^"]*)"', repr(handle)) if handle is not None else None
        shown = f" {match.group(1)!r}" if match else ""
        return (f"a resource{shown} created while the function was traced (nothing in "
                "Python holds it)")
    text = f"the {type(owner).__name__}"
    name = getattr(owner, "name", None)
    if isinstance(name, str) and name:
        text += f" {name!r}"
    filename = getattr(getattr(owner, "_initializer", None), "_filename_arg", None)
    if isinstance(filename, (str, bytes)):
        text += f" (vocabulary file {os.fsdecode(filename)})"
    layer = _holding_layer(owner)
    if layer is not None:
        text += f" held by the {type(layer).__name__} layer {layer.name!r}"
    return text


def _holding_layer(owner: Any) -> Optional[Any]:
    """The Keras layer holding `owner` (two referrer hops, as TensorFlow's own
    message looks): only on the error path, since gc referrers are slow."""
    for first in gc.get_referrers(owner):
        for candidate in [first] + gc.get_referrers(first):
            if (candidate is not owner and _is_trackable(candidate)
                    and hasattr(candidate, "trainable_weights")
                    and isinstance(getattr(candidate, "name", None), str)):
                return candidate
    return None


# File-reading ops and the input holding the file name.
_FILE_OPS = {"InitializeTableFromTextFile": 1, "InitializeTableFromTextFileV2": 1,
             "ReadFile": 0}


def files_read_by_path(concrete) -> List[str]:
    """Files a traced function reads through a constant path: a file not saved as an
    asset (a tracked table's vocabulary is fed from assets/, never a constant)."""
    graph_def = concrete.graph.as_graph_def()
    bodies = [list(graph_def.node)] + [list(f.node_def) for f in graph_def.library.function]
    found = []
    for nodes in bodies:
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            if node.op not in _FILE_OPS or len(node.input) <= _FILE_OPS[node.op]:
                continue
            source = by_name.get(node.input[_FILE_OPS[node.op]].lstrip("^").split(":")[0])
            while source is not None and source.op == "Identity" and source.input:
                source = by_name.get(source.input[0].lstrip("^").split(":")[0])
            if source is not None and source.op == "Const":
                values = source.attr["value"].tensor.string_val
                if values:
                    found.append(values[0].decode("utf-8", "replace"))
    return found


def untracked_save_error(error: AssertionError, endpoint_names: Sequence[str]
                         ) -> Optional[UntrackedResourceError]:
    """The save's own "untracked resource" AssertionError, as an input error (for a
    resource `check_captures` could not attribute)."""
    text = str(error)
    if "untracked" not in text:
        return None
    function = re.search(r"Function name = b?'?([^'\n]*)", text)
    owner = re.search(r"Trackable referencing this tensor = ([^\n]*)", text)
    handle = re.search(r'name="([^"]*)"', text)
    index = next((i for i, n in enumerate(endpoint_names)
                  if function and f"_{n}_" in function.group(1)), None)
    where = f"endpoints[{index}].fn" if index is not None else "track"
    what = (owner.group(1) if owner and owner.group(1) != "None" else
            f"a resource {handle.group(1)!r}" if handle else "a resource")
    return UntrackedResourceError(
        where, f"an endpoint function uses {what}, which nothing the archive tracks holds, "
        "so it cannot be saved (Keras: \"Tried to export a function which references an "
        "'untracked' resource\")", allowed="resources of the model or of objects in "
        "\"track\"", fix=TRACK_FIX)


# ---- what was written


def checkpoint_graph(prefix: str):
    """(reader, TrackableObjectGraph) of the checkpoint at `prefix`."""
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return reader, graph


def verify_collections(export_dir: str, expected: Dict[str, Tuple[str, List[Any]]]) -> None:
    """Every variable collection of the written SavedModel holds, in order, what its
    source holds: as many variables, of the same dtypes, shapes and values.

    `expected`: collection name -> (its config path, the source's variables).
    """
    if not expected:
        return
    reader, graph = checkpoint_graph(os.path.join(export_dir, "variables", "variables"))
    root = {c.local_name: c.node_id for c in graph.nodes[0].children}
    for name, (where, variables) in expected.items():
        if name not in root:
            raise LostVariablesError(where, f"the collection {name!r} was not written",
                                     allowed="every configured collection",
                                     fix="report this export; drop the collection meanwhile")
        items = {int(c.local_name): c.node_id for c in graph.nodes[root[name]].children
                 if c.local_name.isdigit()}
        if len(items) != len(variables):
            raise LostVariablesError(
                f"{where}.source", f"the SavedModel would hold {len(items)} variable(s) in "
                f"{name!r} where the source holds {len(variables)}", len(items),
                f"all {len(variables)}", "report this export; drop the collection meanwhile")
        for i, variable in enumerate(variables):
            keys = [a.checkpoint_key for a in graph.nodes[items[i]].attributes
                    if a.name == "VARIABLE_VALUE"]
            want = np.asarray(variable.numpy())
            got = reader.get_tensor(keys[0]) if keys else None
            if got is None or got.shape != want.shape or got.dtype != want.dtype or \
                    not np.array_equal(got, want):
                shown = "nothing" if got is None else f"{got.dtype}{list(got.shape)}"
                raise LostVariablesError(
                    f"{where}.source", f"variable {i} of {name!r} "
                    f"({getattr(variable, 'name', '?')}) was written as {shown} with other "
                    f"values than the source's {want.dtype}{list(want.shape)}", shown,
                    "the source's values", "report this export; drop the collection "
                    "meanwhile")


def verify_signatures(export_dir: str, endpoint_names: Sequence[str]) -> None:
    """Every configured endpoint is a signature of the written SavedModel, and so is
    `serving_default`."""
    written = set(signature_defs(read_serve_meta_graph(export_dir)))
    for i, name in enumerate(list(endpoint_names) + [DEFAULT_SIGNATURE]):
        if name not in written:
            where = f"endpoints[{i}].name" if i < len(endpoint_names) else "serving_default"
            raise ConfigError(where, f"the endpoint {name!r} was not written as a signature",
                              sorted(written), "every configured endpoint",
                              "report this export; rename the endpoint meanwhile")


def verify_assets(export_dir: str) -> None:
    """Every asset the SavedModel's graph reads is in its assets/ directory."""
    missing = missing_assets(export_dir)
    if missing:
        raise UntrackedResourceError(
            "track", f"the graph reads the asset {missing[0]!r}, which was not "
            "written to assets/", missing, "assets copied into the SavedModel",
            "check that the vocabulary file exists while exporting, and " + TRACK_FIX)
