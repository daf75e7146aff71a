"""Same studies, two checkouts: are the results the same? (probabilities within 1e-5, boxes and outcomes equal)

    git worktree add /tmp/radstream-main main        # or: git archive main | tar -x -C /tmp/radstream-main
    .venv/bin/python benchmarks/compare_results.py --baseline /tmp/radstream-main

Generates the demo set (valid PNG 8/16-bit, JPEG, RGB PNG, the MONOCHROME1 DICOM, the four broken studies) at
512², 1024², 2048² and 3000², non-square crops of them (portrait and landscape, so the letterbox pads), and the
DICOM transfer-syntax studies the container-invariance tests use (those dcmtk writes only when dcmtk is
installed), then runs every one through `radstream run` from each checkout (each with its own code, this
virtual environment) and compares result.json and failure records study by study. Exit code 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic.phantoms import generate_phantom
from synthetic.samples import encode, sidecar, write_demo_studies, write_study

HERE = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def write_studies(out: Path) -> None:
    for size in (512, 1024, 2048, 3000):
        write_demo_studies(out / f"demo-{size}", 12, size=size, invalid=size == 1024, seed=size, prefix=f"d{size}")
    rng = np.random.default_rng(5)
    crops = out / "crops"
    for i, (h, w) in enumerate([(1024, 700), (640, 1024), (2048, 1500), (900, 2048), (3000, 2400), (333, 1024)]):
        image = generate_phantom(rng, size=max(h, w)).image[:h, :w]
        name, data = encode(image, i % 4)
        study_id = f"crop-{i:02d}"
        write_study(crops / study_id, sidecar(study_id, name, rng, data), name, data)
    try:
        from synthetic.transfer_syntaxes import write_transfer_syntax_studies

        write_transfer_syntax_studies(out / "syntaxes", generate_phantom(np.random.default_rng(3), size=512).image)
    except Exception as e:
        print(f"transfer-syntax studies skipped ({type(e).__name__}: {e})", file=sys.stderr)
        shutil.rmtree(out / "syntaxes", ignore_errors=True)


def run_tree(tree: Path, studies: Path, data_dir: Path) -> None:
    subprocess.run(
        [str(HERE / ".venv/bin/python"), "-m", "radstream.cli", "run", str(studies), "--data-dir", str(data_dir), "--quiet", "--json"],
        cwd=tree,
        check=False,
        stdout=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": str(tree)},
        timeout=1800,
    )


def records(data_dir: Path) -> dict[str, dict]:
    out = {}
    for path in (data_dir / "results" / "results").glob("*/result.json"):
        out[path.parent.name] = {"status": "succeeded", **json.loads(path.read_text())}
    for path in (data_dir / "results" / "failed").glob("*/error.json"):
        out.setdefault(path.parent.name, {"status": "failed", **json.loads(path.read_text())})
    return out


def differences(base: dict[str, dict], ours: dict[str, dict]) -> list[str]:
    problems = []
    for study in sorted(set(base) | set(ours)):
        a, b = base.get(study), ours.get(study)
        if a is None or b is None:
            problems.append(f"{study}: only in {'ours' if a is None else 'baseline'}")
            continue
        if a["status"] != b["status"]:
            problems.append(f"{study}: {a['status']} vs {b['status']}")
            continue
        if a["status"] == "failed":
            if (a["stage"], a["error_type"]) != (b["stage"], b["error_type"]):
                problems.append(f"{study}: failed at {a['stage']}/{a['error_type']} vs {b['stage']}/{b['error_type']}")
            continue
        pa = {f["label"]: f for f in a["findings"]}
        pb = {f["label"]: f for f in b["findings"]}
        for label in sorted(set(pa) | set(pb)):
            if (
                label not in pa
                or label not in pb
                or abs(pa[label]["probability"] - pb[label]["probability"]) > TOLERANCE
                or pa[label]["positive"] != pb[label]["positive"]
            ):
                problems.append(f"{study}: finding {label} {pa.get(label)} vs {pb.get(label)}")
        if a["detections"] != b["detections"]:
            problems.append(f"{study}: detections differ: {a['detections']} vs {b['detections']}")
        for field in ("input", "report", "modality", "view_position", "identifiers"):
            if field in ("report",):
                if [s["text"] for s in a[field].get("impression", [])] != [s["text"] for s in b[field].get("impression", [])]:
                    problems.append(f"{study}: report impression differs")
            elif a.get(field) != b.get(field):
                problems.append(f"{study}: {field} differs: {a.get(field)} vs {b.get(field)}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against (e.g. main)")
    parser.add_argument("--keep", type=Path, help="keep the studies and both data dirs here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="radstream-compare-"))
    studies = root / "studies"
    if not studies.exists():
        write_studies(studies)
    for name, tree in (("baseline", args.baseline.resolve()), ("ours", HERE)):
        print(f"running {name} ({tree}) ...", file=sys.stderr)
        shutil.rmtree(root / name, ignore_errors=True)
        for group in sorted(p for p in studies.iterdir() if p.is_dir()):
            run_tree(tree, group, root / name / group.name)
    total, problems = 0, []
    for group in sorted(p.name for p in studies.iterdir() if p.is_dir()):
        base, ours = records(root / "baseline" / group), records(root / "ours" / group)
        total += len(base)
        problems += [f"{group}/{p}" for p in differences(base, ours)]
    succeeded = sum(1 for g in studies.iterdir() for r in records(root / "ours" / g.name).values() if r["status"] == "succeeded")
    print(f"{total} studies compared ({succeeded} with a result), {len(problems)} differences")
    for p in problems:
        print("  " + p)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
