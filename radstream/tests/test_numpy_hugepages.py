"""A process that imports radstream before NumPy runs without NumPy's hugepage advice (radstream/__init__.py), unless its
environment asks for it: a long run's RSS grew with it (benchmarks/limit_bench.py --scale)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# _set_madvise_hugepage returns the setting it replaces: what NumPy chose at import.
PROBE = "import radstream, numpy; from numpy._core import multiarray; print(multiarray._set_madvise_hugepage(False))"


def numpy_advises_hugepages(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | env
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, check=True).stdout.strip()


def test_radstream_turns_numpys_hugepage_advice_off() -> None:
    assert numpy_advises_hugepages({}) == "False"


def test_the_environment_still_decides() -> None:
    assert numpy_advises_hugepages({"NUMPY_MADVISE_HUGEPAGE": "1"}) == "True"
