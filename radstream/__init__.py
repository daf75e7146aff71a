"""The embedded runtime (the local stand-in for AWS and the batch runner), the CLI, the console and the tools.

A process that imports this package before NumPy runs without NumPy's transparent-hugepage advice
(NUMPY_MADVISE_HUGEPAGE=0, unless the environment says otherwise): NumPy marks every array of 4 MB or more
MADV_HUGEPAGE, and where the kernel's THP mode is "madvise", khugepaged then fills the holes that freed pixel and
tensor buffers leave in the heap with whole 2 MB pages, so a long run's RSS grew ~10 KB a study (1024² studies,
`benchmarks/limit_bench.py --scale`) at no measurable gain in CPU. NumPy reads the variable when it is imported.
"""

import os

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
