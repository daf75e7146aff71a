"""High-specificity operating points of the committed classifier, without retraining: the validation and test phantoms
are regenerated (per-sample seeds, as training/train_reference_models.py made them), the committed ONNX model scores
them, and per finding the most sensitive threshold with validation specificity >= 0.95 is chosen
(train_reference_models.high_specificity; a retrain computes the same).

It checks first that it scores the very split the card's thresholds came from: Youden's J recomputed here must equal
thresholds.json, else it stops. Prints the card's table; `--write` puts it into metrics.json and MODEL_CARD.md.

    .venv/bin/python training/operating_points.py [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_reference_models import (  # noqa: E402
    DEFAULT_OUT,
    FINDINGS,
    high_specificity,
    high_specificity_md,
    make_split,
    youden_threshold,
)

MODEL = DEFAULT_OUT / "chest_xray_classifier"


def score(images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) * 2048.0 - 1024.0  # the card's `xrv` normalisation: (2x - 1) * 1024
    return np.concatenate([session.run(None, {"image": x[i : i + 16]})[0] for i in range(0, len(x), 16)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="high-specificity operating points of the committed classifier")
    p.add_argument("--seed", type=int, default=0, help="the card's training seed")
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write them into metrics.json and MODEL_CARD.md")
    args = p.parse_args(argv)
    val, test = (make_split(args.seed, split, n, args.workers) for split, n in (("val", args.n_val), ("test", args.n_test)))
    p_val, p_test = score(val["img224"]), score(test["img224"])
    card = json.loads((MODEL / "thresholds.json").read_text())
    youden = {f: round(youden_threshold(val["y"][:, i], p_val[:, i]), 4) for i, f in enumerate(FINDINGS)}
    if youden != card:
        print(f"not the card's validation split or model: Youden's J here {youden}, thresholds.json {card}", file=sys.stderr)
        return 1
    section = high_specificity(val["y"], p_val, test["y"], p_test)
    table = high_specificity_md(section)
    print(table)
    if args.write:
        metrics = json.loads((MODEL / "metrics.json").read_text()) | {"high_specificity": section}
        (MODEL / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        text = (MODEL / "MODEL_CARD.md").read_text()
        text = re.sub(r"\n### High-specificity operating points\n.*?(?=\n## )", "", text, flags=re.DOTALL)
        text = re.sub(r"(Mean AUROC: \*\*[^\n]*\n)", lambda m: m[1] + "\n" + table + "\n", text, count=1)
        (MODEL / "MODEL_CARD.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
