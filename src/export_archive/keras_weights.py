"""Loads a Keras 3 `.keras` file holding one copy of its big weights, not four.

Why: `keras.saving.load_model` of a recommender whose embedding table is 1 GiB peaks at
+5.3x the weight bytes (bench/bench_scale.py, profile in docs/benchmarks.md):
- the model is built from its config first, so every variable exists once, initialised;
- when the weights are under half the free memory, Keras reads `model.weights.h5` whole
  into an in-memory buffer (one copy);
- each HDF5 dataset is then read whole into a numpy array, converted to a tensor and
  assigned (two more transient copies of the biggest table).
TensorFlow's CPU allocator keeps much of that after the load (another ~1x resident).
A machine for a 4 GiB table is chosen by this figure, and an 8 GiB one does not load at all.

What `lean_weights()` changes, only while it is active and only for variables and datasets
of `STREAM_BYTES` or more:
- a variable Keras creates while building the model from its config starts as zeros
  instead of its initializer's random values (a random initializer allocates several
  temporaries of the table's size); one the file does not overwrite gets its initializer's
  values when the load ends, as a stock load gives it;
- `model.weights.h5` is not read into a buffer: from a `.keras` file on this machine it
  is read in place (Keras stores it uncompressed; `StoredMember`, after one CRC-32 pass),
  otherwise Keras extracts it to disk (its own path for models too big for memory);
- the statement `variable.assign(store[key])` (how Keras layers and optimizers load each
  variable) receives a handle on the dataset, and the assignment copies it into the
  existing variable slice by slice, in place (`ResourceScatterUpdate` by row), so no copy of
  the whole table is ever made.
Everything else (small variables, other dtypes, other statements that read the store,
sharded stores) goes through Keras unchanged. The result is the same model, the same
values: `tests/integration/test_lean_load.py` compares every weight with a stock load.

It relies on Keras internals (`keras.src.saving.saving_lib.H5IOStore.__getitem__`,
`is_memory_sufficient`, `keras.src.backend.common.variables.Variable.assign` and
`_initialize_with_initializer`, and the TF
backend's `Variable._value`). Where one is missing (another Keras), the stock load runs
and a log line says so: nothing is lost but the memory saving.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import linecache
import os
import struct
import sys
import threading
import zipfile
import zlib
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf
from absl import logging

# Variables and datasets at least this big take the lean path; smaller ones are noise.
STREAM_BYTES = 64 * 1024 * 1024
# Each slice is read and copied once in flight (numpy, then tensor): small enough to be
# noise next to a table, large enough that 1000 slices of an 8 GiB table cost nothing.
SLICE_BYTES = 8 * 1024 * 1024

# Patching classes is process-wide; two loads at once must not undo each other's patch
# (reentrant: checkpoint_weights patches under it too).
LOCK = threading.RLock()


class StoredMember(io.RawIOBase):
    """A zip member stored uncompressed (as Keras writes `model.weights.h5`), read in
    place as a seekable file: h5py reads the HDF5 file through it, so the weights are
    not first copied out of the archive (measured at 4 GiB: 17 s of a 42 s export, and
    the weights' size again in disk space)."""

    def __init__(self, path: str, start: int, size: int):
        super().__init__()
        self._file = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(memoryview(buffer)[:wanted])
        self._pos += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def stored_member(archive: zipfile.ZipFile, name: str) -> Optional[StoredMember]:
    """`name` of a local zip file, readable in place; None if it is compressed, encrypted
    or not in a file on this machine. Its CRC-32 is checked first, in one pass, as
    zipfile checks a member it reads whole (a damaged archive is `zipfile.BadZipFile`)."""
    info = archive.getinfo(name)
    path = archive.filename
    if (info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1
            or not path or not os.path.isfile(path)):
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)                     # the member's local file header
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return None
        name_bytes, extra_bytes = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_bytes + extra_bytes
        f.seek(start)
        crc, left = 0, info.file_size
        while left:
            chunk = f.read(min(left, SLICE_BYTES))
            if not chunk:
                raise zipfile.BadZipFile(f"{path}: {name} is truncated")
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"{path}: Bad CRC-32 for file {name!r}")
    return StoredMember(path, start, info.file_size)


class StreamedDataset:
    """A weights dataset handed to `Variable.assign` unread.

    Converting it to an array (anything but our assign) reads it whole, so a consumer we
    did not foresee still gets the right values, only without the saving.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = dataset.dtype
        self.ndim = len(self.shape)

    def __array__(self, dtype=None, copy=None):  # noqa: ARG002 (numpy's protocol)
        value = self.dataset[()]
        return value if dtype is None else value.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return self.dataset[key]

    def assign_into(self, variable: tf.Variable) -> None:
        """Copies the dataset into `variable` slice by slice along its first axis."""
        row_bytes = max(1, int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize)
        rows = max(1, SLICE_BYTES // row_bytes)
        for start in range(0, self.shape[0], rows):
            stop = min(start + rows, self.shape[0])
            assign_rows(variable.handle, start, self.dataset[start:stop])


def assign_rows(handle: Any, start: int, values: Any) -> None:
    """Writes `values` into the variable behind `handle` from row `start` on, in place."""
    # Not `variable[a:b].assign(...)`: that slice helper reads the variable's value first,
    # and the extra reference makes TF copy the whole buffer before writing (measured:
    # 2x). A scatter by row on the handle writes in place and copies row by row: 8x
    # faster than ResourceStridedSliceAssign, which walks the elements (0.19 against
    # 1.47 s per GiB, measured).
    tf.raw_ops.ResourceScatterUpdate(
        resource=handle, indices=tf.range(start, start + len(values), dtype=tf.int64),
        updates=values)


def _is_assign_statement(frame) -> bool:
    """True when the caller's line is `<something>.assign(store[...])`.

    Only there is the value consumed at once, while the weights file is open; a layer that
    keeps what it read (e.g. Discretization's summary) must get an array.
    """
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return ".assign(store[" in line.replace(" ", "")


def _streamable(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if not shape or dtype is None or dtype.kind not in "fiub":
        return False
    attrs = getattr(value, "attrs", {})
    if "dtype" in attrs:          # stored as another dtype (bfloat16): Keras converts
        return False
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize >= STREAM_BYTES


def _keras_internals():
    """(saving_lib, the backend's Variable class, in_stateless_scope), or None if this
    Keras lacks one of them."""
    try:
        # Imported here, not at the top: Keras 3 is loaded only for a Keras 3 file (a
        # tf_keras model must not pay for it), and these are internals (see docstring).
        from keras.src import backend
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        from keras.src.saving import saving_lib
    except ImportError:
        return None
    variable_class = getattr(backend, "Variable", None)
    needed = (backend.backend() == "tensorflow"
              and hasattr(saving_lib, "H5IOStore") and hasattr(saving_lib, "is_memory_sufficient")
              and hasattr(saving_lib, "safe_get_h5_dataset")
              and hasattr(variable_class, "assign")
              and hasattr(variable_class, "_initialize_with_initializer"))
    return (saving_lib, variable_class, in_stateless_scope) if needed else None


@contextlib.contextmanager
def patched(owner: Any, replacements: dict) -> Iterator[None]:
    """Sets attributes on `owner` and puts back exactly what was there (an inherited
    method is deleted again rather than copied onto the subclass)."""
    saved = {name: owner.__dict__.get(name, _ABSENT) for name in replacements}
    for name, value in replacements.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


_ABSENT = object()


def _variable_bytes(variable: Any) -> int:
    return int(np.prod(variable.shape, dtype=np.int64)) * tf.as_dtype(variable.dtype).size


def _zero_fillable(variable: Any) -> bool:
    dtype = tf.as_dtype(variable.dtype)
    return ((dtype.is_floating or dtype.is_integer or dtype.is_bool)
            and _variable_bytes(variable) >= STREAM_BYTES)


class _ReadInPlace(Exception):
    """Raised from Keras's memory check to take its read-from-the-archive path."""


def _reads_archive_when_check_raises(saving_lib) -> bool:
    """True when this Keras, if its memory check raises, reads the weights file from the
    archive as it goes (a bare `except` around the in-memory and extract paths)."""
    try:
        source = inspect.getsource(saving_lib._load_model_from_fileobj)
    except (AttributeError, OSError, TypeError):
        return False
    return "except:" in source and "H5IOStore(_VARS_FNAME_H5, zf" in source


def _stores_weights_uncompressed(model_path: str) -> bool:
    """True when the `.keras` zip stores its weights file uncompressed (as Keras writes
    it): only such a member can be read in place; a compressed one is extracted."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            return archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def lean_weights(model_path: Optional[str] = None) -> Iterator[bool]:
    """While active, `keras.saving.load_model` streams big weights into the variables.

    `model_path`: the `.keras` file; when it is a file on this machine its weights are
    read in place from the archive instead of being extracted first.
    Yields whether the lean path is in place (False: this Keras lacks an internal it
    needs; the load then runs as stock Keras runs it).
    """
    internals = _keras_internals()
    if internals is None:
        logging.info("Keras internals for streaming weights not found; loading the "
                     "model the stock way (its peak memory is ~4-5x the weights)")
        yield False
        return
    saving_lib, variable_class, in_stateless_scope = internals
    store_class = saving_lib.H5IOStore
    stock_getitem, stock_assign = store_class.__getitem__, variable_class.assign
    stock_sufficient = saving_lib.is_memory_sufficient
    stock_initialize = variable_class._initialize_with_initializer
    stock_get_h5_file = getattr(store_class, "_get_h5_file", None)
    in_place = bool(model_path and os.path.isfile(model_path) and stock_get_h5_file
                    and _stores_weights_uncompressed(model_path)
                    and _reads_archive_when_check_raises(saving_lib))
    # Big variables created while loading start as zeros, not as their initializer's
    # random values: a random initializer allocates several temporaries of the table's
    # size (measured: +5x at 128 MiB), and the file overwrites the values anyway. One the
    # file did not overwrite gets its initializer's values when the load ends, as stock.
    awaiting_file = {}

    def initialize(self, initializer):
        if _zero_fillable(self):
            self._initialize(tf.zeros(self.shape, dtype=self.dtype))
            awaiting_file[id(self)] = (self, initializer)
            return None
        return stock_initialize(self, initializer)

    def getitem(self, key):
        # Only the plain store: a sharded one switches files under the dataset.
        if type(self) is store_class and _is_assign_statement(sys._getframe(1)):
            dataset = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key)
            if _streamable(dataset):
                return StreamedDataset(dataset)
        return stock_getitem(self, key)

    def assign(self, value):
        awaiting_file.pop(id(self), None)
        target = getattr(self, "_value", None)
        if (isinstance(value, StreamedDataset) and isinstance(target, tf.Variable)
                and tuple(self.shape) == value.shape
                and np.dtype(target.dtype.as_numpy_dtype) == value.dtype
                and not in_stateless_scope()):
            value.assign_into(target)
            return target
        if isinstance(value, StreamedDataset):
            value = np.asarray(value)      # unforeseen: read whole, as Keras would
        return stock_assign(self, value)

    def sufficient(model):
        # When any variable is big enough to stream, the weights file is not read into
        # memory: read in place from a local archive (Keras's fallback when this check
        # raises: its "on the fly" path, through `get_h5_file` below), else extracted to
        # disk (False). Otherwise Keras decides as it always does.
        if any(_variable_bytes(v) >= STREAM_BYTES for v in model.variables):
            if in_place:
                raise _ReadInPlace()
            return False
        return stock_sufficient(model)

    def get_h5_file(self, path_or_io, mode=None):
        import h5py   # Keras 3's own HDF5 reader; imported with Keras, not before
        if self.archive and (mode or self.mode) == "r":
            member = stored_member(self.archive, str(path_or_io))
            if member is not None:
                self.io_file = member
                return h5py.File(member, mode="r")
        return stock_get_h5_file(self, path_or_io, mode)

    store_patches = {"__getitem__": getitem}
    if in_place:
        store_patches["_get_h5_file"] = get_h5_file
    with LOCK, patched(store_class, store_patches), \
            patched(variable_class, {"assign": assign,
                                      "_initialize_with_initializer": initialize}), \
            patched(saving_lib, {"is_memory_sufficient": sufficient}):
        yield True
    for variable, initializer in awaiting_file.values():
        variable.assign(initializer(variable.shape, dtype=variable.dtype))

