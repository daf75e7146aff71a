"""Tensors as .npy bytes (NumPy's format, version 1.0), written and read without NumPy's per-call header work.

`np.save` / `np.load` format and parse the header's Python-literal dictionary on every call (`ast.literal_eval`):
~0.1 ms per tensor, several times per study. A pipeline's tensors come in a handful of (dtype, shape)s, so the
header bytes are built once per (dtype, shape) and a header read back is looked up by its bytes; a header not seen
before is parsed by NumPy's own reader. The bytes are exactly `np.save`'s (a test checks it), so an artifact
written here is an ordinary .npy file in S3 or on disk.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from numpy.lib import format as npy_format

_MAX_CACHED = 256  # distinct headers kept; more (a flood of odd shapes) are still read correctly, just not cached
_written: dict[tuple[str, tuple[int, ...]], bytes] = {}
_read: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_lock = threading.Lock()


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    key = (dtype.str, shape)
    header = _written.get(key)
    if header is None:
        buffer = io.BytesIO()
        npy_format.write_array_header_1_0(buffer, {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        header = buffer.getvalue()
        with _lock:
            if len(_written) < _MAX_CACHED:
                _written[key] = header
    return header


def to_npy(tensor: np.ndarray) -> bytes:
    """The .npy bytes of `tensor`, as np.save(allow_pickle=False) writes them."""
    if tensor.dtype.hasobject:
        raise ValueError("object arrays are not tensors")
    if not tensor.flags.c_contiguous:
        tensor = np.ascontiguousarray(tensor)
    return _header(tensor.dtype, tensor.shape) + tensor.tobytes()


def from_npy(raw: bytes) -> np.ndarray:
    """The array in .npy bytes, as np.load(allow_pickle=False) reads it (read-only: it shares `raw`'s memory)."""
    if raw[:8] != npy_format.MAGIC_PREFIX + b"\x01\x00" or len(raw) < 10:
        return np.load(io.BytesIO(raw), allow_pickle=False)  # another version of the format: NumPy's reader
    end = 10 + int.from_bytes(raw[8:10], "little")
    header = bytes(raw[:end])
    known = _read.get(header)
    if known is None:
        stream = io.BytesIO(raw)
        npy_format.read_magic(stream)
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        if dtype.hasobject:
            raise ValueError("object arrays are not tensors (allow_pickle is off)")
        known = (dtype, tuple(shape), bool(fortran_order))
        with _lock:
            if len(_read) < _MAX_CACHED:
                _read[header] = known
    dtype, shape, fortran_order = known
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - end < count * dtype.itemsize:
        raise ValueError(f"truncated .npy: {len(raw) - end} bytes of data for shape {shape} {dtype}")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=end)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)
