"""One tensor spec type, written as the config, `describe` and the contract write it.

``"float32[?,3]"``: a dtype name, then the dims (``?`` unknown size, ``*`` for an
unknown rank), then `` (coo_sparse)`` / `` (composite_tensor)`` for a tensor a
SignatureDef does not carry by name. Standard library only: the config parses it
without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

DENSE = "dense"
UNKNOWN_DIMS = ("?", "None")     # how a dim of unknown size may be written
UNKNOWN_RANK = "*"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What a client must send (an input) or may read (an output) under one key."""
    dtype: str
    shape: Optional[Tuple[Optional[int], ...]]   # None: unknown rank
    encoding: str = DENSE                        # dense | coo_sparse | composite_tensor

    @classmethod
    def from_text(cls, text: str) -> "TensorSpec":
        """The spec `str()` wrote; spaces and "None" for "?" accepted (the config's
        spelling). Raises ValueError on any other text."""
        text = text.strip()
        encoding = DENSE
        if text.endswith(")") and " (" in text:
            text, encoding = text[:-1].rsplit(" (", 1)
        dtype, bracket, dims = text.partition("[")
        if not bracket or not dims.endswith("]") or not dtype.strip():
            raise ValueError(f"not a tensor spec: {text!r} (write e.g. float32[?,3])")
        dims = dims[:-1].strip()
        if dims == UNKNOWN_RANK:
            return cls(dtype.strip(), None, encoding)
        shape = tuple(None if d.strip() in UNKNOWN_DIMS else int(d)
                      for d in dims.split(",")) if dims else ()
        return cls(dtype.strip(), shape, encoding)

    @property
    def dims(self) -> Tuple[str, ...]:
        """The dims as written ("?" unknown); () for an unknown rank as for a scalar."""
        return tuple("?" if d is None else str(d) for d in self.shape or ())

    def __str__(self) -> str:
        dims = UNKNOWN_RANK if self.shape is None else ",".join(self.dims)
        suffix = "" if self.encoding == DENSE else f" ({self.encoding})"
        return f"{self.dtype}[{dims}]{suffix}"
