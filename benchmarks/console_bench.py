"""Benchmark the console on a large data dir: page load times for the studies page, a study and the dashboard.

    .venv/bin/python benchmarks/console_bench.py --studies 10000

Writes a synthetic data dir (in a temporary folder unless --data-dir is given; nothing to commit): per study a
result.json + report.txt (or, for about 5 %, a failure record), a trace, one gzip NDJSON telemetry object per study
as the local sink writes them (7 records for a stored study, 2 for a failed one) spread over the last six days, and
the EMF lines the handlers would capture. The images are 24 real phantom studies (8-bit, 16-bit, JPEG, MONOCHROME1
DICOM) that the results point at in turn, since ten thousand 1024x1024 pictures would only measure the disk.

Then it starts `radstream console` on a free loopback port (startup: reading every record and lake object once)
and measures, with Chromium, each page's load (navigation start to the load event, image included), plus the
server's own time per page over plain HTTP. Figures: median and max of --repeat loads each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from synthetic.phantoms import generate_phantom, to_uint8, to_uint16  # noqa: E402
from synthetic.samples import dicom_bytes  # noqa: E402
from synthetic.peers import CHROMIUM_ARGS, start_console as start_console_process  # noqa: E402
from shared.metrics import LocalEmfFile, ModelLatency, stage_metrics  # noqa: E402

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
THRESHOLDS = [0.3257, 0.3597, 0.2929, 0.5077, 0.0955]
PROVENANCE = "reference model trained on synthetic phantoms, not clinically validated"
MODELS = {
    name: {"name": name, "version": "1", "provenance": PROVENANCE}
    for name in ("chest_xray_classifier", "anomaly_detector", "report_encoder")
}
FAILURES = [
    ("validate", "InvalidStudy", "sidecar breaks schema v1: (top level): field(s) patient_name not allowed"),
    ("validate", "InvalidImage", "image 'image.png' is not PNG, JPEG or DICOM (by its content; the extension is not trusted)"),
    ("prepare", "InvalidImage", "image decodes to a constant value: nothing to read"),
]


def write_images(data_dir: Path, count: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    keys = []
    for i in range(count):
        image = generate_phantom(rng, size=1024).image
        folder = data_dir / "images" / "incoming" / f"bench-image-{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 4 == 3:
            name, data = "study.dcm", dicom_bytes(np.round((1.0 - image) * 4095), "MONOCHROME1")
        elif i % 4 == 2:
            name, data = "image.jpg", cv2.imencode(".jpg", to_uint8(image), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        else:
            name, data = "image.png", cv2.imencode(".png", to_uint16(image) if i % 4 else to_uint8(image))[1].tobytes()
        (folder / name).write_bytes(data)
        keys.append((f"incoming/bench-image-{i:02d}/{name}", 1024, 1024))
    return keys


def record(
    study: str,
    execution: str,
    stage: str,
    at: datetime,
    ms: float,
    status: str = "succeeded",
    model: str | None = None,
    error: str | None = None,
) -> dict:
    return {
        "schema_version": "1",
        "event_id": str(uuid.uuid4()),
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "study_id": study,
        "execution_id": execution,
        "stage": stage,
        "status": status,
        "duration_ms": round(ms, 3),
        "model_name": model,
        "model_version": "1" if model else None,
        "error_type": error,
        "bytes_in": 1000,
        "bytes_out": 1000,
        "cold_start": False,
    }


def generate(data_dir: Path, studies: int, seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    images = write_images(data_dir, 24, rng)
    now = datetime.now(UTC)
    emf = LocalEmfFile(data_dir)
    results = data_dir / "results"
    for n in range(studies):
        study = f"bench-{n:05d}"
        execution_id = f"arn:aws:states:local:000000000000:execution:StateMachine:{study}-{n:08x}"
        at = now - timedelta(seconds=pyrng.uniform(60, 6 * 86400))
        failed = pyrng.random() < 0.05
        e2e = pyrng.lognormvariate(4.4, 0.3)
        if failed:
            stage, error, message = pyrng.choice(FAILURES)
            folder = results / "failed" / study
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.json").write_text(
                json.dumps(
                    {
                        "schema_version": "1",
                        "study_id": study,
                        "status": "failed",
                        "stage": stage,
                        "error_type": error,
                        "message": f"study {study}: {message}",
                        "input": {"bucket": "images", "key": f"incoming/{study}/study.json"},
                        "execution_id": execution_id,
                        "failed_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    },
                    indent=2,
                )
            )
            records = [
                record(study, execution_id, stage, at, 5.0, "failed", error=error),
                record(study, execution_id, "workflow", at, e2e / 5, "failed", error=error),
            ]
            emf.write(stage_metrics(stage=stage, status="failed", duration_ms=5.0, error_type=error, study_status="failed", study_id=study))
        else:
            key, w, h = images[n % len(images)]
            probabilities = [round(float(p), 4) for p in rng.beta(0.6, 2.0, size=5)]
            findings = [
                {"label": lab, "probability": p, "threshold": t, "positive": p >= t} for lab, p, t in zip(LABELS, probabilities, THRESHOLDS)
            ]
            detections = []
            for _ in range(int(rng.integers(0, 4))):
                x, y, s = float(rng.uniform(100, 800)), float(rng.uniform(100, 800)), float(rng.uniform(30, 120))
                detections.append(
                    {
                        "label": str(rng.choice(["nodule_mass", "focal_opacity"])),
                        "score": round(float(rng.uniform(0.3, 0.95)), 4),
                        "box": [round(x, 1), round(y, 1), round(x + s, 1), round(y + s, 1)],
                    }
                )
            positives = [f["label"] for f in findings if f["positive"]]
            result = {
                "schema_version": "1",
                "study_id": study,
                "status": "succeeded",
                "label": "not for clinical use",
                "input": {"image": {"bucket": "images", "key": key}, "sha256": f"{n:064x}", "size_bytes": 600000, "width": w, "height": h},
                "execution_id": execution_id,
                "completed_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "models": MODELS,
                "findings": findings,
                "detections": detections,
                "report": {
                    "label": "AI-generated draft, not for clinical use",
                    "findings_text": f"Suggested findings: {', '.join(positives) or 'none'}.",
                    "impression": [{"text": "No pulmonary edema.", "similarity": 0.43}, {"text": "No atelectasis.", "similarity": 0.42}],
                    "embedding_model": MODELS["report_encoder"],
                },
                "timings_ms": {
                    "study": 3.1,
                    "tensors": 24.0,
                    "inference.chest_xray_classifier": 4.1,
                    "inference.anomaly_detector": 10.6,
                    "inference.report_encoder": 6.0,
                },
            }
            folder = results / "results" / study
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.json").write_text(json.dumps(result, indent=2))
            (folder / "report.txt").write_text(f"RadStream draft report for study {study}\nAI-GENERATED DRAFT, NOT FOR CLINICAL USE\n")
            stages = [
                ("validate", 2.3, None),
                ("prepare", 24.3, None),
                ("inference", 4.1, "chest_xray_classifier"),
                ("inference", 10.6, "anomaly_detector"),
                ("inference", 6.0, "report_encoder"),
                ("store", 1.0, None),
            ]
            records = [record(study, execution_id, s, at, ms * pyrng.uniform(0.8, 1.6), model=m) for s, ms, m in stages]
            records.append(record(study, execution_id, "workflow", at, e2e))
            emf.write(
                stage_metrics(
                    stage="store",
                    status="succeeded",
                    duration_ms=1.0,
                    findings=findings,
                    detections=detections,
                    study_status="succeeded",
                    study_id=study,
                    models=[ModelLatency(m, "1", ms) for _, ms, m in stages if m],
                )
            )
        lake = data_dir / "telemetry" / "telemetry" / f"dt={at:%Y-%m-%d}" / f"hour={at:%H}"
        lake.mkdir(parents=True, exist_ok=True)
        (lake / f"radstream-telemetry-1-{at:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.json.gz").write_bytes(
            gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0)
        )
        t0 = at.timestamp() - e2e / 1000
        trace = {
            "trace_id": f"1-{int(t0):08x}-{n:024x}",
            "id": f"{n:016x}",
            "name": "radstream-study",
            "start_time": t0,
            "end_time": at.timestamp(),
            "annotations": {"study_id": study, "status": "FAILED" if failed else "SUCCEEDED", "execution": execution_id.rsplit(":", 1)[-1]},
            "subsegments": [
                {"id": f"{i:016x}", "name": name, "start_time": t0 + i * e2e / 8000, "end_time": t0 + (i + 1) * e2e / 8000}
                for i, name in enumerate(
                    ["ValidateMetadata", "PrepareTensors", "Classify", "Detect", "Encode", "StoreResults", "SendTelemetry"]
                )
            ],
        }
        traces = data_dir / "traces" / study
        traces.mkdir(parents=True, exist_ok=True)
        (traces / f"{execution_id.rsplit(':', 1)[-1]}.json").write_text(json.dumps(trace))


def start_console(data_dir: Path) -> tuple[subprocess.Popen, str, float]:
    started = time.perf_counter()
    process, url, line = start_console_process(data_dir, deadline_s=300)
    if url is None:
        raise SystemExit(f"the console did not start: {line!r}")
    return process, url, time.perf_counter() - started


def http_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="loads per page (default 5)")
    parser.add_argument("--data-dir", help="where to write the synthetic data dir (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()

    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="radstream-console-bench-"))
    try:
        started = time.perf_counter()
        if not (root / "results").exists():
            generate(root, args.studies)
        print(f"data dir {root}: {args.studies} studies written in {time.perf_counter() - started:.1f} s", flush=True)
        process, url, startup_s = start_console(root)
        print(f"console startup (every record, lake object and EMF line read once): {startup_s:.2f} s", flush=True)
        try:
            stored = sorted(p.parent.name for p in (root / "results" / "results").glob("*/result.json"))
            measure(url, args.repeat, stored[:5], stored[-1])
        finally:
            process.terminate()
            process.wait(10)
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def measure(url: str, repeat: int, first_views: list[str], study: str) -> None:
    from playwright.sync_api import sync_playwright

    pages = [
        ("studies (first page of 50, last 30 days)", "studies"),
        ("studies, filtered (succeeded, Edema, 7 days)", "studies?status=succeeded&finding=Edema&days=7"),
        ("studies, page 100", "studies?page=100"),
        ("study (1024x1024 image, boxes, trace)", f"study/{study}"),
        ("dashboard, 7 days", "dashboard?days=7"),
        ("dashboard, 30 days", "dashboard?days=30"),
    ]
    print(f"\n{'page':45} {'server ms (median/max)':>24} {'browser load ms (median/max)':>30}")
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = context.new_page()
        # A study's first view decodes its image (prepare's decoder); later views reuse the decoded picture.
        cold = []
        for study_id in first_views:
            started = time.perf_counter()
            page.goto(url + f"study/{study_id}", wait_until="load")
            cold.append((time.perf_counter() - started) * 1000)
        for name, path in pages:
            server = [http_ms(url + path) for _ in range(repeat)]
            browser = []
            for _ in range(repeat):
                started = time.perf_counter()
                page.goto(url + path, wait_until="load")
                browser.append((time.perf_counter() - started) * 1000)
            print(
                f"{name:45} {statistics.median(server):>12.0f} / {max(server):<9.0f} {statistics.median(browser):>16.0f} / {max(browser):<9.0f}",
                flush=True,
            )
        print(f"{'study, first view (image decoded), 5 studies':45} {'':>24} {statistics.median(cold):>16.0f} / {max(cold):<9.0f}")
        context.close()


if __name__ == "__main__":
    sys.exit(main())
