"""Open Inference Protocol (v2) tensors ↔ numpy arrays.

Two encodings, shared by the REST API and gRPC:

- JSON ``data``: a flat (row-major) or nested list; ``BYTES`` elements are
  strings (UTF-8), ``BOOL`` elements booleans, ``FP16``/``BF16`` numbers;
- binary (Triton's binary tensor data extension, and gRPC's
  ``raw_input_contents``/``raw_output_contents``): the little-endian bytes of
  the array in row-major order; ``BYTES`` elements each prefixed by their length
  as a 4-byte little-endian integer; ``BF16`` as 2-byte bfloat16.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from math import prod
from typing import Any

import ml_dtypes
import numpy as np

from mlaas4hep.serve.backends.base import NUMPY_TYPES
from mlaas4hep.serve.errors import BadRequest

DTYPES: dict[str, np.dtype[Any]] = {**NUMPY_TYPES, "BF16": np.dtype(ml_dtypes.bfloat16)}
"""The numpy dtype of every v2 datatype (``BYTES``: object arrays of ``bytes``)."""

ELEMENT_SIZE = {name: dtype.itemsize for name, dtype in DTYPES.items() if name != "BYTES"}


def datatype_name(array: np.ndarray) -> str:
    """The v2 datatype of ``array``."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype == array.dtype and name != "BYTES":
            return name
    raise BadRequest(f"no v2 datatype for numpy dtype {array.dtype}")


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints, or :class:`BadRequest`."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _dtype(name: str, datatype: Any) -> np.dtype[Any]:
    if datatype not in DTYPES:
        raise BadRequest(
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DTYPES)}"
        )
    return DTYPES[datatype]


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """The array of a JSON tensor (``data`` flat or nested, row-major)."""
    dtype = _dtype(name, datatype)
    count = prod(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"input {name!r}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() for v in flat]
    else:
        try:
            source = np.asarray(data)
        except ValueError:
            raise BadRequest(f"input {name!r}: the nested 'data' lists are ragged") from None
        if source.dtype.kind not in "biuf":
            raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
        if datatype == "BOOL" and source.dtype.kind != "b":
            raise BadRequest(f"input {name!r}: BOOL data must be true/false")
        if source.dtype.kind == "f" and dtype.kind in "iu":
            raise BadRequest(f"input {name!r}: {datatype} data must be integers")
        array = source.reshape(-1).astype(dtype)
    if array.size != count:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {count} elements, 'data' has {array.size}"
        )
    return array.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def from_bytes(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """The array of a binary tensor."""
    dtype = _dtype(name, datatype)
    count = prod(shape)
    if datatype == "BYTES":
        return _unpack_strings(name, raw, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: {datatype} shape {list(shape)} needs {expected} bytes, got {len(raw)}"
        )
    return (
        np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    )


def _unpack_strings(name: str, raw: bytes, count: int) -> np.ndarray:
    array = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: the BYTES data ends after {i} of {count} elements")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"input {name!r}: BYTES element {i} runs past the end of the data")
        array[i] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise BadRequest(f"input {name!r}: {len(raw) - offset} bytes left after {count} elements")
    return array


def to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The binary encoding of ``array`` as ``datatype``."""
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            item = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    dtype = DTYPES[datatype].newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def to_json(array: np.ndarray, datatype: str) -> list[Any]:
    """The flat JSON ``data`` of ``array`` as ``datatype``."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if datatype in ("FP16", "BF16"):
        return flat.astype(np.float32).tolist()
    return flat.tolist()
