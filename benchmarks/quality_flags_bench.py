"""How often each quality flag fires, and what it costs (docs/models.md, "Quality flags").

    .venv/bin/python benchmarks/quality_flags_bench.py --phantoms 300 --demo 50

Counts the flags on: the demo studies run end to end (`radstream demo`, results' input.quality_flags); upright
phantoms as 8-bit PNG and as 12-bit MONOCHROME1 DICOM; and the cases each flag is for (a MONOCHROME1 header over
MONOCHROME2 pixels, limb-like, ramp and noise pictures, dark, washed-out and flat chests). Times the flags at 1024²
as prepare computes them (from the letterbox it already made) and on the full picture, and the percentile levels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radstream.cli import main as radstream
from synthetic.phantoms import generate_limb, generate_phantom, to_uint8
from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset, stored_values
from services.prepare.domain import picture_flags
from shared.letterbox import letterbox
from services.prepare.quality import quality_flags
from shared.pixels import decode_dicom, decode_raster, percentile_levels

SIZE = 512


def flags(data: bytes, fmt: str) -> list[str]:
    decoded = decode_dicom(data, "b") if fmt == "dicom" else decode_raster(data, "b")
    return picture_flags(decoded.pixels, decoded.declared_levels, {256: letterbox(decoded.pixels, 256)})


def dicom(values: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    return dataset_bytes(dicom_dataset(values, photometric))


def cases(n: int) -> dict[str, list[tuple[bytes, str]]]:
    chests = [generate_phantom(np.random.default_rng(10_000 + i), size=SIZE).image for i in range(n)]
    rng = np.random.default_rng(1)
    ramp = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))
    others = [generate_limb(rng, SIZE) for _ in range(max(1, n // 4))] + [ramp, ramp.T.copy(), (ramp + ramp.T) / 2]
    others += [rng.random((SIZE, SIZE)).astype(np.float32) for _ in range(3)]
    return {
        "upright phantoms, 8-bit PNG": [(cv2.imencode(".png", to_uint8(c))[1].tobytes(), "png") for c in chests],
        "upright phantoms, DICOM 12-bit MONOCHROME1": [
            (dicom(stored_values(c, 12, "MONOCHROME1"), "MONOCHROME1"), "dicom") for c in chests
        ],
        "MONOCHROME1 header over MONOCHROME2 pixels": [(dicom(stored_values(c, 12), "MONOCHROME1"), "dicom") for c in chests],
        "not a chest (limbs, ramps, noise)": [(dicom(stored_values(o, 12)), "dicom") for o in others],
        "dark chest (0.3 x picture)": [(dicom(stored_values(0.3 * c, 12)), "dicom") for c in chests],
        "washed-out chest (0.55 + 0.45 x picture)": [(dicom(stored_values(0.55 + 0.45 * c, 12)), "dicom") for c in chests],
        "flat chest (0.45 + 0.12 x picture)": [(dicom(stored_values(0.45 + 0.12 * c, 12)), "dicom") for c in chests],
    }


def demo_flags(count: int) -> tuple[int, Counter]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        radstream(["demo", "--count", str(count), "--data-dir", tmp, "--quiet", "--json"])
        results = list(Path(tmp, "results", "results").glob("*/result.json"))
        counter: Counter = Counter()
        for path in results:
            counter.update(json.loads(path.read_text())["input"].get("quality_flags") or ["(none)"])
        return len(results), counter


def timing(runs: int = 200) -> dict[str, float]:
    picture = cv2.resize(generate_phantom(np.random.default_rng(3), size=1024).image, (1024, 1024))
    values = stored_values(picture, 12).astype(np.uint16)
    squares = {256: letterbox(picture, 256)}
    levels = (0.0, 0.05, 0.9, 1.0)
    out = {}
    for name, fn in (
        ("flags as prepare computes them (from the 256² letterbox)", lambda: picture_flags(picture, levels, squares)),
        ("flags from the full 1024² picture", lambda: quality_flags(picture, levels)),
        ("percentile levels of 1024² 12-bit values", lambda: percentile_levels(values)),
    ):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        out[name] = float(np.median(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=300)
    parser.add_argument("--demo", type=int, default=50)
    args = parser.parse_args()
    for name, ms in timing().items():
        print(f"{name:60s} median {ms:.3f} ms")
    print()
    for name, items in cases(args.phantoms).items():
        counter: Counter = Counter()
        for data, fmt in items:
            counter.update(flags(data, fmt) or ["(none)"])
        print(f"{name:45s} n={len(items):4d}  " + ", ".join(f"{flag} {count}" for flag, count in sorted(counter.items())))
    if args.demo:
        n, counter = demo_flags(args.demo)
        print(
            f"{'radstream demo --count ' + str(args.demo) + ' (results)':45s} n={n:4d}  "
            + ", ".join(f"{flag} {count}" for flag, count in sorted(counter.items()))
        )


if __name__ == "__main__":
    main()
