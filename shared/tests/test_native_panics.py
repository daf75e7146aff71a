"""A native extension that panics (pyo3's PanicException, a BaseException: pylibjpeg-rle raises one on GDCM's RLE of
pydicom's MR_small_padded.dcm) fails the stage with an error of the tree, which the workflow's Catch records as the
study's failure; before, it passed every `except Exception` and took `radstream run` down whole. A process being
stopped (Ctrl-C, SystemExit, the reliability tests' simulated kill) is not turned into a study's error."""

from __future__ import annotations

import pytest

from shared.errors import NativeLibraryPanic, PermanentError, is_native_panic
from shared.observability import StageHandler


def panic_class() -> type[BaseException]:
    """The shape pyo3 gives it: a BaseException named PanicException in module pyo3_runtime (one class per extension)."""
    return type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})


class Killed(BaseException):
    pass


def handler(error: BaseException) -> StageHandler:
    def run(event, deps):
        raise error

    return StageHandler("prepare", run, lambda settings: None)


def test_a_native_panic_is_a_permanent_error_of_the_tree_naming_the_stage():
    panic = panic_class()("index out of bounds: the len is 8192 but the index is 8192")
    assert is_native_panic(panic) and not isinstance(panic, Exception)
    with pytest.raises(NativeLibraryPanic) as caught:
        handler(panic).invoke({"study_id": "s1", "execution_id": "e1"}, None, deps=None)
    assert isinstance(caught.value, PermanentError) and caught.value.__cause__ is panic
    assert str(caught.value) == "study s1: the prepare stage's native library crashed (PanicException) on this input; the input is kept"
    assert "8192" not in str(caught.value)  # the panic's own text never reaches the record


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, Killed])
def test_stopping_the_process_is_not_a_study_error(stop):
    assert not is_native_panic(stop())
    with pytest.raises(stop):
        handler(stop()).invoke({"study_id": "s1", "execution_id": "e1"}, None, deps=None)
