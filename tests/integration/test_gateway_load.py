"""The load test, small (and the Orthanc latency mode, small): benchmarks/gateway_bench.py --load with 20 concurrent associations (pynetdicom SCUs in
their own process, real associations over loopback) sending 100 instances to a gateway that admits 5 at a time.
Fails on a lost instance (a C-STORE success without its stored object, its succeeded run and its result), on
the limit exceeded, and on any patient value found outside the images bucket and the DICOM/FHIR exports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "gateway_bench.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("gateway_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twenty_associations_lose_nothing_respect_the_limit_and_leak_no_phi(tmp_path):
    work = tmp_path / "load"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--load",
            "--associations",
            "20",
            "--instances",
            "100",
            "--max-associations",
            "5",
            "--size",
            "96",
            "--work-dir",
            str(work),
            "--out",
            str(tmp_path / "summary.json"),
            "--deadline-s",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert (tmp_path / "summary.json").is_file(), run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lost_count"] == 0, summary["lost"]
    assert summary["phi_hit_count"] == 0, summary["phi_hits"]
    assert summary["scu"]["successes"] == 100 and summary["scu"]["failures"] == 0 and summary["scu"]["unfinished"] == 0
    assert summary["store"] == {"objects": 100, "distinct_successes": 100, "runs": 100, "runs_succeeded": 100, "results": 100}
    # 20 modalities against 5 slots: some were turned away, retried, and got in; never more than 5 at once.
    assert summary["scu"]["associations_rejected"] > 0
    assert summary["scu"]["associations_established"] >= 20
    assert 1 <= summary["gateway"]["peak_concurrent_associations"] <= 5
    assert run.returncode == 0, run.stdout[-2000:]

    # The scan is not blind: the patient is in what was stored and exported, and a planted value is found.
    bench = bench_module()
    data = work / "data"
    stored = next((data / "images" / "incoming").rglob("*.dcm")).read_bytes()
    assert all(value.encode() in stored for value in bench.PHI.values())
    sr = next((data / "results" / "results").rglob("report.sr.dcm")).read_bytes()
    assert bench.PHI["PatientID"].encode() in sr and bench.PHI["AccessionNumber"].encode() in sr
    assert bench.phi_scan(data, "") == []
    trace = next(p for p in data.rglob("*") if p.is_file() and p.relative_to(data).parts[0] == "traces")
    trace.write_bytes(trace.read_bytes() + bench.PHI["PatientBirthDate"].encode())
    assert bench.phi_scan(data, f"stored for {bench.PHI['AccessionNumber']}") == [
        "AccessionNumber in the log output",
        f"PatientBirthDate in {trace.relative_to(data)}",
    ]


def test_the_orthanc_mode_finds_each_sr_in_the_pacs_and_times_it(tmp_path):
    """benchmarks/gateway_bench.py --orthanc, small: Debian's Orthanc as the PACS; every stored instance's SR is
    found there by QIDO-RS, and the C-STORE -> SR-in-Orthanc times are reported."""
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--orthanc",
            "--instances",
            "2",
            "--size",
            "128",
            "--syntax",
            "explicit-le",
            "--work-dir",
            str(tmp_path / "orthanc"),
            "--out",
            str(tmp_path / "summary.json"),
            "--deadline-s",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert (tmp_path / "summary.json").is_file(), run.stderr[-3000:] + run.stdout[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["stored"], summary["succeeded"], summary["srs_found_in_orthanc"]) == (2, 2, 2), summary
    assert 0 < summary["cstore_to_sr_in_orthanc_s_median"] <= summary["cstore_to_sr_in_orthanc_s_p95"] < 300
    assert run.returncode == 0
