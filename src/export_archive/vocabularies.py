"""Lookup vocabularies are saved as asset files, not as constants in the graph.

A Keras `StringLookup` / `IntegerLookup` (Keras 3 and tf_keras alike) given its
vocabulary as a list, and any such layer of a model loaded from `.keras`, builds its
table from a `KeyValueTensorInitializer`: the tokens are a tensor, so a SavedModel
stores them as a `Const` node in `saved_model.pb`. A vocabulary of a million tokens
adds ~20 MB to the graph, pushes a large recommender towards the protobuf's 2 GiB
limit, and costs every TF Serving load 1.3-2 GiB more memory than the same tokens in
a file (the parsed graph, the constant tensor and the table; bench/bench_scale.py). TF Transform's vocabularies are files read by a
`TextFileInitializer`, which TF saves as an asset under `assets/`; this module gives
the model's own vocabularies the same form for the duration of an export.

For each such table, `as_assets` writes its tokens one per line (in index order) to
a temporary file, and puts a `StaticHashTable` initialized from that file in the
layer's place; the original table is put back and the files removed when the export
ends, so the caller's model is left as it was. A table is left as a constant (with a
log line) when its tokens cannot round-trip through a text file (an empty token, or
one holding a line break), its indices are not consecutive, or the file-backed
table does not map every key exactly as the original does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

WHOLE_LINE = tf.lookup.TextFileIndex.WHOLE_LINE
LINE_NUMBER = tf.lookup.TextFileIndex.LINE_NUMBER


@contextlib.contextmanager
def as_assets(roots: Iterable[Any]) -> Iterator[int]:
    """Within the block, the Keras lookup layers under `roots` read their vocabulary
    from a file that the SavedModel saves as an asset. Yields how many were moved."""
    swapped: List[Tuple[Any, str, Any]] = []
    directory: Optional[str] = None
    try:
        for layer, attr, table in _constant_tables(roots):
            if directory is None:
                directory = tempfile.mkdtemp(prefix="export-archive-vocab-")
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{layer.name}_{attr}")
            path = os.path.join(directory, f"{len(swapped)}_{name}.txt")
            file_table = _file_backed(table, path, layer.name)
            if file_table is not None:
                setattr(layer, attr, file_table)
                swapped.append((layer, attr, table))
        yield len(swapped)
    finally:
        for layer, attr, table in reversed(swapped):
            setattr(layer, attr, table)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _layers(root: Any) -> List[Any]:
    flatten = getattr(root, "_flatten_layers", None)   # Keras 3 and tf_keras alike
    if callable(flatten):
        return list(flatten(include_self=True, recursive=True))
    return []


def _constant_tables(roots: Iterable[Any]) -> List[Tuple[Any, str, Any]]:
    """(layer, attribute, table) for each hash table built from in-memory tensors."""
    found, seen = [], set()
    for root in roots:
        for layer in _layers(root):
            for attr, value in list(vars(layer).items()):
                if (isinstance(value, tf.lookup.StaticHashTable) and id(value) not in seen
                        and isinstance(getattr(value, "_initializer", None),
                                       tf.lookup.KeyValueTensorInitializer)):
                    seen.add(id(value))
                    found.append((layer, attr, value))
    return found


def _consecutive(values: np.ndarray) -> bool:
    if values.dtype.kind not in "iu" or values.size == 0:
        return False
    ordered = np.sort(values)
    return bool(np.array_equal(ordered, np.arange(ordered[0], ordered[0] + values.size)))


def _file_backed(table: Any, path: str, layer_name: str) -> Optional[Any]:
    # Keras's lookups map tokens (strings or int64) to int64 indices, or back.
    if not {table.key_dtype, table.value_dtype} <= {tf.string, tf.int64} or \
            tf.int64 not in (table.key_dtype, table.value_dtype):
        return None
    key_tensor, value_tensor = table.export()
    keys, values = key_tensor.numpy(), value_tensor.numpy()
    if table.value_dtype == tf.int64 and _consecutive(values):   # token -> index
        tokens, indices, key_index, value_index = keys, values, WHOLE_LINE, LINE_NUMBER
    elif table.key_dtype == tf.int64 and _consecutive(keys):      # index -> token (invert)
        tokens, indices, key_index, value_index = values, keys, LINE_NUMBER, WHOLE_LINE
    else:
        return _kept(layer_name, "its indices are not consecutive")
    lines = [t if isinstance(t, bytes) else str(t).encode() for t in tokens[np.argsort(indices)]]
    if any(not t or b"\n" in t or t.endswith(b"\r") for t in lines):
        return _kept(layer_name, "a token is empty or holds a line break")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    with tf.init_scope():
        file_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                path, table.key_dtype, key_index, table.value_dtype, value_index,
                vocab_size=len(lines), value_index_offset=int(indices.min())),
            table.default_value)
        same = bool(tf.reduce_all(tf.equal(file_table.lookup(key_tensor), value_tensor)))
    if not same:
        return _kept(layer_name, "the file-backed table does not map every key the same")
    return file_table


def _kept(layer_name: str, why: str) -> None:
    logging.info("The vocabulary of layer %r stays a graph constant: %s.", layer_name, why)
    return None
