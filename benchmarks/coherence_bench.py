"""Count incoherent results over synthetic studies run end to end through the embedded pipeline.

    .venv/bin/python benchmarks/coherence_bench.py --studies 500 --size 256

Prints how many results carry an impression sentence that contradicts the findings (radstream/coherence.py's
text judge), and how many carry two boxes overlapping with IoU > 0.5 (and > 0.9, of different labels).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radstream.coherence import contradictions, overlapping_boxes
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.settings import Settings


def audit(studies: int, size: int, seed: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = write_demo_studies(root / "studies", studies, size=size, seed=seed, invalid=False)
        started = time.perf_counter()
        with LocalRuntime(Settings(data_dir=root / "data"), workers=workers) as runtime:
            outcomes = runtime.run_many(folders).outcomes
        wall = time.perf_counter() - started
        failed = [o.study_id for o in outcomes if o.status != "succeeded"]
        results = [
            json.loads((root / "data" / "results" / "results" / o.study_id / "result.json").read_text())
            for o in outcomes
            if o.status == "succeeded"
        ]
    contradicting = {r["study_id"]: contradictions(r) for r in results}
    overlap = {r["study_id"]: overlapping_boxes(r) for r in results}
    near_duplicate = {k: [p for p in v if p[0] != p[1] and p[2] > 0.9] for k, v in overlap.items()}
    return {
        "studies": len(outcomes),
        "failed": failed,
        "wall_s": round(wall, 1),
        "results_contradicting_findings": sum(1 for v in contradicting.values() if v),
        "results_with_boxes_iou_over_0.5": sum(1 for v in overlap.values() if v),
        "results_with_different_label_boxes_iou_over_0.9": sum(1 for v in near_duplicate.values() if v),
        "impression_lengths": dict(sorted(Counter(len(r["report"]["impression"]) for r in results).items())),
        "examples": {k: v for k, v in list(contradicting.items()) if v}.__repr__()[:600],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    report = audit(args.studies, args.size, args.seed, args.workers)
    print(json.dumps(report, indent=2))
    return (
        0 if not report["failed"] and not report["results_contradicting_findings"] and not report["results_with_boxes_iou_over_0.5"] else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
