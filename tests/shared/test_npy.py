"""shared.npy writes np.save's very bytes and reads what np.load reads, faster (no per-call header parsing)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shared.npy import from_npy, to_npy


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 1, 224, 224), np.float32),
        ((1, 1, 512, 512), np.float32),
        ((3,), np.int64),
        ((2, 3, 4), np.uint16),
        ((), np.float64),
        ((0, 5), np.float32),
    ],
)
def test_bytes_are_np_saves_and_np_load_reads_them_back(shape, dtype):
    array = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert to_npy(array) == buffer.getvalue()
    assert to_npy(array) == buffer.getvalue()  # the cached header too
    for raw in (buffer.getvalue(), to_npy(array)):
        back = from_npy(raw)
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
        again = from_npy(raw)  # the cached header
        assert again.dtype == array.dtype and again.shape == array.shape and np.array_equal(again, array)


def test_a_non_contiguous_view_is_written_as_its_values():
    array = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert np.array_equal(from_npy(to_npy(array)), array)
    assert np.array_equal(from_npy(buffer.getvalue()), array)


def test_fortran_order_and_other_versions_read_as_numpy_reads_them():
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert np.array_equal(from_npy(buffer.getvalue()), array)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ones((2, 2), np.float32), version=(2, 0))
    assert np.array_equal(from_npy(buffer.getvalue()), np.ones((2, 2), np.float32))


def test_truncated_and_object_arrays_are_refused():
    raw = to_npy(np.ones((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="truncated"):
        from_npy(raw[:-4])
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        from_npy(buffer.getvalue())
    with pytest.raises(ValueError):
        to_npy(np.array([None], dtype=object))
