"""A tiny synthetic DICOM study and the result the pipeline made of it, for the stages' warm start (no patient data:
a 64x64 phantom, PatientName WARMUP^SYNTHETIC).

A stage's first study pays its libraries' lazy set-up (highdicom's tables of the standard, the FHIR models' imports,
pydicom's pixel handlers, ONNX Runtime's first run); `StageHandler.warm` runs the same code on this study, in memory,
before the first real one (the local runtime at start; benchmarks/limit_bench.py --warm-start measures it).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
DICOM = FOLDER / "study.dcm"
RESULT = FOLDER / "result.json"
