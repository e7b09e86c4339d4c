"""Restores a SavedModel's big variables from its checkpoint slice by slice.

Why: a tf_keras SavedModel (what a TFX Trainer writes) whose embedding table is 1 GiB
peaks at +2.65x the weight bytes while `tf_keras.models.load_model` runs
(bench/bench_scale.py, profile in docs/benchmarks.md):
- tf_keras rebuilds each layer from its config first, so every variable exists once,
  filled by its initializer (a random one allocates temporaries of the table's size);
- TensorFlow's checkpoint restore then reads every tensor of the checkpoint whole, all of
  them in one `RestoreV2` op, and holds them until each variable has copied its own (a
  second copy of all the weights);
- TensorFlow's CPU allocator keeps much of that after the load.
With an 8 GiB table the stock `load_model` fails at 9.4 GiB resident (one bench run's
error: "Bad address" from TF's reader); this path loads it at 1.14x.
`tf.saved_model.load` of a plain SavedModel pays the same second copy.

What `lean_restore()` changes, only while it is active and only for plain tensors of
`keras_weights.STREAM_BYTES` or more that a resource variable restores:
- the restore reads every other tensor as TensorFlow does, and leaves the big ones out of
  its `RestoreV2`; the variable copies its tensor from the shard file (`variables.data-*`)
  in `keras_weights.SLICE_BYTES` slices straight into its own buffer, checking the
  tensor's CRC32C as TensorFlow's reader does (a mismatch is TensorFlow's `DataLossError`);
- a big variable tf_keras creates while rebuilding a layer starts with no values written
  (`Empty`), not its initializer's; one the checkpoint does not restore gets its
  initializer's values when the load ends, as a stock load gives it.
Where the tensor's place in the shard comes from: the checkpoint's `variables.index`, a
table of `BundleEntryProto`s (TensorFlow's tensor_bundle format: a LevelDB-style table,
written uncompressed). Anything this module does not recognise (a compressed or
big-endian bundle, a sliced or string tensor, a restore traced into a tf.function, a
variable class that restores itself otherwise) goes through TensorFlow unchanged.
`tests/integration/test_lean_load.py` compares every weight with a stock load.

It relies on TensorFlow internals (`checkpoint.functional_saver._single_shard_restore`,
`BaseResourceVariable._restore_from_tensors`) and tf_keras's
`base_layer_utils.make_variable`; where one is missing the stock load runs and a log line
says so.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from typing import Any, Dict, Iterator, Optional, Tuple

import google_crc32c
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import tensor_bundle_pb2

from . import keras_weights

# LevelDB table format (TensorFlow's core/lib/io/format.h): a 48-byte footer ending in this
# magic number; each block is followed by a type byte (0: uncompressed) and a CRC.
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5
_UNCOMPRESSED = 0
# TensorFlow masks stored CRC32Cs (core/lib/hash/crc32c.h).
_CRC_MASK_DELTA = 0xA282EAD8


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _block(table: bytes, handle: bytes) -> Optional[bytes]:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + _BLOCK_TRAILER_BYTES > len(table) or table[offset + size] != _UNCOMPRESSED:
        return None
    return table[offset:offset + size]


def _block_entries(block: bytes) -> Iterator[Tuple[bytes, bytes]]:
    """(key, value) of each entry: keys share a prefix with the one before."""
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        own, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + own]
        pos += own
        yield key, block[pos:pos + size]
        pos += size


def read_bundle_index(prefix: str) -> Optional[Dict[str, Any]]:
    """{tensor name: BundleEntryProto} of the checkpoint at `prefix`, or None when its index
    is not one this module reads (compressed, big-endian, damaged: TF's reader decides)."""
    try:
        with tf.io.gfile.GFile(prefix + ".index", "rb") as f:
            table = f.read()
        if len(table) < _FOOTER_BYTES or struct.unpack_from(
                "<Q", table, len(table) - 8)[0] != _TABLE_MAGIC:
            return None
        footer = table[len(table) - _FOOTER_BYTES:]
        _, pos = _varint(footer, _varint(footer, 0)[1])          # skip the metaindex handle
        index = _block(table, footer[pos:])
        if index is None:
            return None
        entries = {}
        for _, handle in _block_entries(index):
            block = _block(table, handle)
            if block is None:
                return None
            for key, value in _block_entries(block):
                if key == b"":
                    header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                    if (header.endianness != tensor_bundle_pb2.BundleHeaderProto.LITTLE
                            or sys.byteorder != "little"):
                        return None
                    entries[""] = header
                elif not key.startswith(b"\x00"):   # "\0name\0slice": a partitioned tensor's
                    # pieces, read by TF (their full entry lists slices: not streamed)
                    entries[key.decode("utf-8")] = (
                        tensor_bundle_pb2.BundleEntryProto.FromString(value))
        return entries if "" in entries else None
    except (tf.errors.OpError, OSError, ValueError, IndexError, struct.error) as e:
        logging.info("Checkpoint index %s.index not read for streaming (%s); TensorFlow "
                     "restores it whole", prefix, e)
        return None


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class UnreadTensor:
    """A checkpoint tensor handed to its variable's restore unread.

    Converted to a tensor by anything but our restore (a consumer we did not foresee), it
    is read whole and checked, so the values are right, only without the saving.
    """

    def __init__(self, name: str, data_path: str, entry: Any):
        self.name, self.data_path = name, data_path
        self.dtype = tf.as_dtype(entry.dtype)
        self.shape = tuple(d.size for d in entry.shape.dim)
        self.offset, self.size, self.crc32c = entry.offset, entry.size, entry.crc32c

    def _slices(self, rows_per_slice: int) -> Iterator[Tuple[int, np.ndarray]]:
        """(first row, values) along the first axis; the CRC is checked after the
        last slice, as TensorFlow's reader checks it after reading the whole tensor."""
        item = np.dtype(self.dtype.as_numpy_dtype)
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * item.itemsize
        crc = 0
        with tf.io.gfile.GFile(self.data_path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, self.shape[0], rows_per_slice):
                stop = min(start + rows_per_slice, self.shape[0])
                data = f.read((stop - start) * row_bytes)
                if len(data) != (stop - start) * row_bytes:
                    raise tf.errors.DataLossError(
                        None, None, f"{self.data_path}: read less bytes than requested for "
                        f"{self.name} (the shard file is truncated)")
                crc = google_crc32c.extend(crc, data)
                yield start, np.frombuffer(data, dtype=item).reshape((stop - start,) + row_shape)
        if _mask(crc) != self.crc32c:
            raise tf.errors.DataLossError(
                None, None, f"Checksum does not match: stored {self.crc32c:08x} vs. "
                f"calculated on the restored bytes {_mask(crc):08x} for {self.name} in "
                f"{self.data_path}")

    def read_whole(self) -> tf.Tensor:
        (_, values), = self._slices(self.shape[0])
        return tf.constant(values, dtype=self.dtype)

    def stream_into(self, variable: Any) -> None:
        if not variable.is_initialized():
            # A buffer whose pages are untouched until a slice lands on them: the variable
            # costs its size once, as the slices arrive.
            tf.raw_ops.AssignVariableOp(resource=variable.handle, value=tf.raw_ops.Empty(
                shape=self.shape, dtype=self.dtype, init=False))
        rows = max(1, keras_weights.SLICE_BYTES // max(1, self.size // max(1, self.shape[0])))
        for start, values in self._slices(rows):
            keras_weights.assign_rows(variable.handle, start, values)


tf.register_tensor_conversion_function(
    UnreadTensor, lambda value, dtype=None, name=None, as_ref=False: value.read_whole())


def _streamable(entry: Any, spec: str) -> bool:
    dtype = tf.as_dtype(entry.dtype) if entry.dtype else None
    return (not spec and not entry.slices and dtype is not None
            and dtype.is_numpy_compatible and dtype not in (tf.string, tf.resource, tf.variant)
            and len(entry.shape.dim) >= 1 and entry.size >= keras_weights.STREAM_BYTES)


def _internals():
    """(functional_saver, BaseResourceVariable) or None if this TensorFlow lacks them."""
    try:
        # Internals (see the module docstring): imported where they are patched.
        from tensorflow.python.checkpoint import functional_saver
        from tensorflow.python.ops import resource_variable_ops
        from tensorflow.python.training.saving import saveable_object_util
    except ImportError:
        return None
    variable_class = getattr(resource_variable_ops, "BaseResourceVariable", None)
    # The pure-Python CRC32C would take minutes per GiB: without its C build, TF reads.
    if not (google_crc32c.implementation == "c"
            and hasattr(functional_saver, "_single_shard_restore")
            and hasattr(variable_class, "_restore_from_tensors")
            and hasattr(saveable_object_util, "SaveableCompatibilityConverter")
            and hasattr(saveable_object_util, "TrackableSaveable")):
        return None
    return functional_saver, variable_class, saveable_object_util


def _restored_variable(trackable: Any, variable_class: type, saveables: Any) -> Any:
    """The variable a checkpoint entry restores into, or None if it is anything else.

    A SavedModel's loader restores each variable through a compatibility wrapper around
    one saveable that calls the variable's own `_restore_from_tensors`."""
    if isinstance(trackable, saveables.SaveableCompatibilityConverter):
        inner = trackable.saveables
        if len(inner) != 1 or not isinstance(inner[0], saveables.TrackableSaveable):
            return None
        trackable = getattr(inner[0], "_trackable", None)
    return trackable if isinstance(trackable, variable_class) else None


@contextlib.contextmanager
def lean_restore(tf_keras_layers: bool = False) -> Iterator[bool]:
    """While active, a SavedModel's big variables are restored slice by slice.

    `tf_keras_layers`: tf_keras layers rebuilt from their config start their big variables
    unwritten instead of initialised. Yields whether the lean path is in place.
    """
    internals = _internals()
    make_variable_owner = None
    if tf_keras_layers:
        try:
            # tf_keras is optional and loaded only for its flavor.
            from tf_keras.src.engine import base_layer_utils as make_variable_owner
        except ImportError:
            internals = None
    if internals is None or (tf_keras_layers and not hasattr(make_variable_owner, "make_variable")):
        logging.info("TensorFlow internals for streaming a checkpoint not found; restoring "
                     "it the stock way (its peak memory is ~2-3x the weights)")
        yield False
        return
    functional_saver, variable_class, saveables = internals
    stock_shard_restore = functional_saver._single_shard_restore
    stock_restore = variable_class._restore_from_tensors
    indexes: Dict[str, Optional[Dict[str, Any]]] = {}
    awaiting_checkpoint = {}   # id -> (variable, initializer) for variables started unwritten

    def shard_restore(file_prefix, shardable_tensors, options=None):
        if not tf.executing_eagerly() or not hasattr(file_prefix, "numpy"):
            return stock_shard_restore(file_prefix, shardable_tensors, options)
        prefix = file_prefix.numpy().decode("utf-8")
        if prefix not in indexes:
            indexes[prefix] = read_bundle_index(prefix)
        entries = indexes[prefix]
        streamed, rest = {}, []
        for shardable in shardable_tensors:
            save_spec = shardable._tensor_save_spec
            name = save_spec.name if save_spec else shardable.checkpoint_key
            spec = save_spec.slice_spec if save_spec else shardable.slice_spec
            entry = entries.get(name) if entries else None
            variable = _restored_variable(shardable.trackable, variable_class, saveables)
            # Only a variable whose restore is ours consumes an unread tensor in place.
            if (entry is not None and _streamable(entry, spec) and variable is not None
                    and type(variable)._restore_from_tensors is restore):
                header = entries[""]
                data_path = f"{prefix}.data-{entry.shard_id:05d}-of-{header.num_shards:05d}"
                streamed[shardable] = UnreadTensor(name, data_path, entry)
            else:
                rest.append(shardable)
        restored = stock_shard_restore(file_prefix, rest, options) if rest else {}
        for shardable, unread in streamed.items():
            restored.setdefault(shardable.checkpoint_key, {})[shardable.slice_spec] = unread
        return restored

    def restore(self, restored_tensors):
        awaiting_checkpoint.pop(id(self), None)
        # tf.saved_model's own key for a variable's value (trackable.VARIABLE_VALUE_KEY).
        value = restored_tensors.get("VARIABLE_VALUE")
        if isinstance(value, UnreadTensor) and tuple(self.shape) == value.shape \
                and self.dtype == value.dtype:
            with tf.device(self.device):
                value.stream_into(self)
            return None
        return stock_restore(self, restored_tensors)

    def make_variable(name, shape=None, dtype=tf.float32, initializer=None, **kwargs):
        dtype = tf.as_dtype(dtype or tf.float32)
        size = (int(np.prod(shape, dtype=np.int64)) * dtype.size
                if shape is not None and None not in tuple(shape) else 0)
        # A layer built after the restore began gets TF's checkpoint initializer: stock.
        if (size < keras_weights.STREAM_BYTES or not callable(initializer)
                or type(initializer).__name__ == "CheckpointInitialValueCallable"):
            return stock_make_variable(name, shape=shape, dtype=dtype,
                                       initializer=initializer, **kwargs)
        variable = stock_make_variable(
            name, shape=shape, dtype=dtype, initializer=lambda shape, dtype=None, **_: (
                tf.raw_ops.Empty(shape=shape, dtype=dtype or tf.float32, init=False)), **kwargs)
        awaiting_checkpoint[id(variable)] = (variable, initializer)
        return variable

    layer_patch = contextlib.nullcontext()
    if make_variable_owner is not None:
        stock_make_variable = make_variable_owner.make_variable
        layer_patch = keras_weights.patched(make_variable_owner, {"make_variable": make_variable})
    with keras_weights.LOCK, layer_patch, \
            keras_weights.patched(functional_saver, {"_single_shard_restore": shard_restore}), \
            keras_weights.patched(variable_class, {"_restore_from_tensors": restore}):
        yield True
    for variable, initializer in awaiting_checkpoint.values():
        variable.assign(initializer(variable.shape, dtype=variable.dtype))

