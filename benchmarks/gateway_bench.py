"""Gateway throughput, load and C-STORE-to-SR latency, with real associations over loopback.

    .venv/bin/python benchmarks/gateway_bench.py --instances 20 [--syntax jpeg-ls-lossless] [--workers 2]
    .venv/bin/python benchmarks/gateway_bench.py --load --associations 200 --instances 2000 [--max-associations 10] [--size 128]
    .venv/bin/python benchmarks/gateway_bench.py --orthanc --instances 20 [--delivery stow|dimse]

Default mode (dcmtk's storescu as the modality):
1. Throughput: one storescu association sends N CR instances (each its own study UID); instances/s is N over
   storescu's wall time, with the pipeline off (receive + check + durable store only).
2. Latency: the same N again to a gateway feeding the local pipeline; for each instance, the time from the
   gateway storing it (the C-STORE success point) to its report.sr.dcm being written: median and p95.

--load [--receive-only]: a separate SCU process opens A concurrent associations (pynetdicom, one thread each, all released
together by a barrier) and sends N instances between them, each instance its own study, carrying a patient
name, ID, birth date and accession number. The gateway (GATEWAY_MAX_ASSOCIATIONS = --max-associations)
feeds the local pipeline. A rejected association (A-ASSOCIATE-RJ, "local limit exceeded") is retried with
jittered back-off until its instances land. Checked, and the exit status says so: every C-STORE success the
SCU counted has its stored object and a succeeded run with a result (0 lost); the gateway never held more
associations than the limit; and the PHI scan: no patient value in any file outside the images bucket and
the DICOM/FHIR exports (logs, traces, telemetry lake, journal, events, results json, failure records), nor
in the process's log output; the accession number and UIDs only in result.json's identifiers block.
--receive-only leaves the pipeline out (the gateway as it runs in AWS: receive, check, durable store).

--orthanc: Debian's Orthanc as the PACS; storescu sends N instances; the gateway runs each and delivers its SR
(the workflow's DeliverResults; `sr_delivery` sets where); the bench polls Orthanc's QIDO-RS for each study's SR and
reports C-STORE success -> SR found in Orthanc, median and p95.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from radstream.runtime import LocalRuntime  # noqa: E402
from services.gateway.server import Gateway, LocalPipeline  # noqa: E402
from synthetic.instances import cr_instance  # noqa: E402
from shared.settings import Settings  # noqa: E402

KEY = "bench-key-0123456789abcdef"
# The load test's patient: distinctive values the PHI scan looks for. UIDs under a root of their own, so one
# prefix finds any of them (pydicom's generated UIDs have no dot after its root, so none can match).
PHI = {
    "PatientName": "LOADTEST^PHIPATIENT",
    "PatientID": "MRN-LOAD-90817",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "ACC-LOAD-55123",
}
UID_ROOT = "1.2.826.0.1.3680043.8.498.4711."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def send(port: int, files: list[Path], syntax_flag: str) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        [shutil.which("storescu") or "storescu", syntax_flag, "-aec", "RADSTREAM", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise SystemExit(f"storescu failed: {run.stderr.strip()}")
    return time.perf_counter() - started


def throughput(args: argparse.Namespace) -> int:
    flag = {"jpeg-ls-lossless": "-xt", "explicit-le": "-xe", "jpeg2000-lossless": "-xv"}[args.syntax]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files = []
        for i in range(args.instances):
            path = tmp_path / f"cr{i}.dcm"
            path.write_bytes(cr_instance(args.syntax, seed=i))
            files.append(path)
        base = dict(gateway_dimse_port=0, gateway_http_port=0, gateway_pseudonym_key="bench-key-0123456789abcdef")

        settings = Settings(data_dir=tmp_path / "store-only", **base)
        with Gateway(settings) as gateway:
            wall = send(gateway.dimse.port, files, flag)
        stored = len(list((settings.data_dir / "images").rglob("*.dcm")))

        settings = Settings(data_dir=tmp_path / "pipeline", **base)
        stored_at: dict[str, float] = {}
        with LocalRuntime(settings, workers=args.workers) as runtime:
            pipeline = LocalPipeline(runtime, workers=args.workers)

            def on_stored(received):
                stored_at[received.study_id] = time.time()
                pipeline(received)

            with Gateway(settings, store=runtime.store, on_stored=on_stored) as gateway:
                started = time.perf_counter()
                send(gateway.dimse.port, files, flag)
                outcomes = [f.result(timeout=600) for f in list(pipeline.futures.values())]
                total = time.perf_counter() - started
            pipeline.close()
        latencies = []
        for study_id, t0 in stored_at.items():
            sr = settings.data_dir / "results" / "results" / study_id / "report.sr.dcm"
            if sr.exists():
                latencies.append((sr.stat().st_mtime - t0) * 1000)
        summary = {
            "instances": args.instances,
            "syntax": args.syntax,
            "bytes_per_instance": files[0].stat().st_size,
            "store_only": {"stored": stored, "wall_s": round(wall, 3), "instances_per_s": round(args.instances / wall, 1)},
            "with_pipeline": {
                "workers": args.workers,
                "succeeded": sum(o.status == "succeeded" for o in outcomes),
                "wall_s": round(total, 2),
                "instances_per_s": round(args.instances / total, 2),
                "cstore_to_sr_ms_median": round(percentile(latencies, 0.5), 1) if latencies else None,
                "cstore_to_sr_ms_p95": round(percentile(latencies, 0.95), 1) if latencies else None,
            },
        }
    print(json.dumps(summary, indent=2))
    return 0 if summary["with_pipeline"]["succeeded"] == args.instances and stored == args.instances else 1


# --- load: many concurrent associations, nothing lost, no PHI outside its places -------------------------------


def load_instances(folder: Path, count: int, size: int, syntax: str) -> list[dict[str, str]]:
    """`count` instances, each its own study, from 8 distinct images (re-encoding per instance is not what is measured)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    bases = [pydicom.dcmread(io.BytesIO(cr_instance(syntax, seed=seed, size=size))) for seed in range(8)]
    manifest = []
    for i in range(count):
        ds = bases[i % len(bases)]
        study, series, sop = (f"{UID_ROOT}{i}.{part}" for part in (1, 2, 3))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        path = folder / f"i{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        manifest.append({"path": str(path), "study": study, "sop": sop})
    return manifest


def scu_worker(args: argparse.Namespace) -> int:
    """The modalities: one thread per association, started together; retries until every instance got an answer."""
    import logging

    from pynetdicom import AE

    from shared.acceptance import CR_IMAGE_STORAGE

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # rejected associations would log an error each
    manifest = json.loads(Path(args.manifest).read_text())
    syntax = args.transfer_syntax
    shares = [manifest[i :: args.associations] for i in range(args.associations)]
    barrier = threading.Barrier(args.associations)
    lock = threading.Lock()
    out: dict[str, Any] = {
        "successes": [],
        "failures": [],
        "rejected": 0,
        "not_established": 0,
        "out_of_resources": 0,
        "dropped": 0,
        "established": 0,
        "unfinished": 0,
    }
    deadline = time.time() + args.deadline_s

    def count(name: str, n: int = 1) -> None:
        with lock:
            out[name] += n

    def modality(index: int, items: list[dict[str, str]]) -> None:
        ae = AE(ae_title=f"LOAD{index:04d}")
        ae.add_requested_context(CR_IMAGE_STORAGE, syntax)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        pending = list(items)
        attempt = 0
        barrier.wait()
        while pending and time.time() < deadline:
            assoc = ae.associate("127.0.0.1", args.port, ae_title="RADSTREAM")
            if not assoc.is_established:
                count("rejected" if assoc.is_rejected else "not_established")
                attempt += 1
                # Jittered exponential back-off, 0.2 s doubling up to 5 s: a modality's retry, not a reconnect storm
                # (each attempt costs both sides an association thread and a socket).
                time.sleep(random.uniform(0.5, 1.0) * min(5.0, 0.2 * 2 ** min(attempt, 5)))
                continue
            count("established")
            attempt = 0
            try:
                while pending:
                    item = pending[0]
                    status = assoc.send_c_store(Path(item["path"]))
                    if not status or "Status" not in status:
                        count("dropped")
                        break  # no answer: associate again and send it again (a re-sent instance maps to the same key)
                    code = int(status.Status)
                    if code == 0x0000:
                        with lock:
                            out["successes"].append({"study": item["study"], "sop": item["sop"], "at": time.time()})
                        pending.pop(0)
                    elif code & 0xFF00 == 0xA700:
                        count("out_of_resources")
                        time.sleep(0.2)
                        break
                    else:
                        with lock:
                            out["failures"].append({"sop": item["sop"], "status": code})
                        pending.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
        count("unfinished", len(pending))

    started = time.time()
    threads = [threading.Thread(target=modality, args=(i, share), name=f"scu-{i}") for i, share in enumerate(shares) if share]
    if len(threads) != args.associations:
        raise SystemExit(f"{args.associations} associations need at least as many instances")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out["started_at"], out["finished_at"] = started, time.time()
    Path(args.out).write_text(json.dumps(out))
    return 0


def phi_scan(data_dir: Path, log_text: str) -> list[str]:
    """Where a patient value turned up outside the images bucket and the DICOM/FHIR exports: '<value name> in <path>'."""
    patient = {k: v.encode() for k, v in PHI.items() if k != "AccessionNumber"}
    patient["PatientFamilyName"] = PHI["PatientName"].split("^")[0].encode()
    identifiers = {"AccessionNumber": PHI["AccessionNumber"].encode(), "UID": UID_ROOT.encode()}
    hits = []
    for name, value in {**patient, **identifiers}.items():
        if value.decode() in log_text:
            hits.append(f"{name} in the log output")
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        if not path.is_file() or relative.parts[0] == "images":
            continue  # the inputs, kept as sent
        if relative.parts[0] == "results" and (path.suffix == ".dcm" or path.name.endswith(".fhir.json")):
            continue  # the exports addressed back to the hospital (SR, overlay, FHIR bundle) carry them by design
        content = path.read_bytes()
        if path.suffix == ".gz":
            content = gzip.decompress(content)
        for name, value in patient.items():
            if value in content:
                hits.append(f"{name} in {relative}")
        if relative.parts[0] == "results" and path.name == "result.json":
            result = json.loads(content)
            block = result.pop("identifiers", None) or {}
            if block.get("AccessionNumber") != PHI["AccessionNumber"] or not str(block.get("StudyInstanceUID", "")).startswith(UID_ROOT):
                hits.append(f"result.json without its identifiers block: {relative}")
            content = json.dumps(result).encode()
        for name, value in identifiers.items():
            if value in content:
                hits.append(f"{name} in {relative}")
    return hits


class LogCapture:
    """Everything the process writes to stdout/stderr (the runtime's JSON logs, pynetdicom, warnings) goes to one
    file while the gateway runs, at the file-descriptor level, so no handler escapes it; the root logger at DEBUG."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> LogCapture:
        import logging

        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.file = open(self.path, "w")
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        self.handler = logging.StreamHandler(self.file)
        self.handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        self.level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)
        logging.getLogger().setLevel(self.level)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.file.close()


def load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pydicom
    from pynetdicom import evt

    from services.gateway.domain import study_id_for

    manifest = load_instances(work / "send", args.instances, args.size, args.syntax)
    (work / "manifest.json").write_text(json.dumps(manifest))
    syntax = str(pydicom.dcmread(manifest[0]["path"], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    settings = Settings(
        data_dir=work / "data",
        gateway_dimse_port=0,
        gateway_http_port=0,
        gateway_pseudonym_key=KEY,
        gateway_max_associations=args.max_associations,
    )
    stored_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    active = {"now": 0, "peak": 0, "accepted": 0}
    lock = threading.Lock()

    def opened(event: Any) -> None:
        with lock:
            active["now"] += 1
            active["accepted"] += 1
            active["peak"] = max(active["peak"], active["now"])

    def closed(event: Any) -> None:
        with lock:
            active["now"] -= 1

    def modalities(gateway: Gateway) -> None:
        gateway.dimse.server.bind(evt.EVT_ESTABLISHED, opened)
        for closing in (evt.EVT_RELEASED, evt.EVT_ABORTED):
            gateway.dimse.server.bind(closing, closed)
        scu = subprocess.run(
            [
                sys.executable,
                __file__,
                "--scu-worker",
                "--port",
                str(gateway.dimse.port),
                "--manifest",
                str(work / "manifest.json"),
                "--associations",
                str(args.associations),
                "--transfer-syntax",
                syntax,
                "--out",
                str(work / "scu.json"),
                "--deadline-s",
                str(args.deadline_s),
            ],
            capture_output=True,
            text=True,
            timeout=args.deadline_s + 120,
        )
        if scu.returncode != 0:
            raise SystemExit(f"the SCU process failed: {scu.stderr[-2000:]}")

    outcomes: dict[str, Any] | None = None
    with LogCapture(work / "process.log"):
        if args.receive_only:  # the gateway alone: receive, check, durable store (what a pod does in AWS)
            with Gateway(settings, on_stored=lambda received: stored_at.__setitem__(received.key, time.time())) as gateway:
                modalities(gateway)
        else:
            with LocalRuntime(settings, workers=args.workers) as runtime:
                pipeline = LocalPipeline(runtime, workers=args.workers)

                def on_stored(received: Any) -> None:
                    stored_at[received.key] = time.time()
                    pipeline(received)
                    pipeline.futures[received.key].add_done_callback(lambda _f, key=received.key: done_at.__setitem__(key, time.time()))

                with Gateway(settings, store=runtime.store, on_stored=on_stored) as gateway:
                    modalities(gateway)
                outcomes = {key: future.result(timeout=args.deadline_s) for key, future in list(pipeline.futures.items())}
                pipeline.close()
    sent = json.loads((work / "scu.json").read_text())

    # Every success the SCU counted: its object in the images bucket, its run succeeded, its result written.
    lost, expected_keys = [], set()
    for success in sent["successes"]:
        study_id, instance = study_id_for(KEY.encode(), success["study"], success["sop"])
        key = f"incoming/{study_id}/{instance}.dcm"
        expected_keys.add(key)
        if not (settings.data_dir / "images" / key).is_file():
            lost.append(f"{key}: no stored object")
        elif outcomes is None:
            continue  # --receive-only: the stored object is the end
        elif key not in outcomes or outcomes[key].status != "succeeded":
            lost.append(f"{key}: run {outcomes[key].status if key in outcomes else 'never started'}")
        elif not (settings.data_dir / "results" / "results" / study_id / "result.json").is_file():
            lost.append(f"{key}: no result.json")
    stored_objects = len(list((settings.data_dir / "images" / "incoming").rglob("*.dcm")))
    results = len(list((settings.data_dir / "results" / "results").glob("*/result.json")))
    hits = phi_scan(settings.data_dir, (work / "process.log").read_text(errors="replace"))
    first, last_ok = sent["started_at"], max((s["at"] for s in sent["successes"]), default=sent["started_at"])
    end = max(done_at.values(), default=last_ok)
    latencies = [(done_at[k] - stored_at[k]) for k in stored_at if k in done_at]
    return {
        "mode": "load",
        "date": time.strftime("%Y-%m-%d"),
        "associations": args.associations,
        "instances": args.instances,
        "max_associations": args.max_associations,
        "image_size": args.size,
        "syntax": args.syntax,
        "bytes_per_instance": Path(manifest[0]["path"]).stat().st_size,
        "pipeline_workers": args.workers,
        "scu": {
            "successes": len(sent["successes"]),
            "failures": len(sent["failures"]),
            "unfinished": sent["unfinished"],
            "associations_established": sent["established"],
            "associations_rejected": sent["rejected"],
            "associations_not_established_otherwise": sent["not_established"],
            "dropped": sent["dropped"],
            "out_of_resources": sent["out_of_resources"],
        },
        "gateway": {
            "peak_concurrent_associations": active["peak"],
            "associations_accepted": active["accepted"],
            "limit_respected": active["peak"] <= args.max_associations,
        },
        "receive_only": bool(args.receive_only),
        "store": {
            "objects": stored_objects,
            "distinct_successes": len(expected_keys),
            "runs": None if outcomes is None else len(outcomes),
            "runs_succeeded": None if outcomes is None else sum(o.status == "succeeded" for o in outcomes.values()),
            "results": results,
        },
        "lost": lost[:20],
        "lost_count": len(lost),
        "phi_hits": hits[:20],
        "phi_hit_count": len(hits),
        "received_s": round(last_ok - first, 2),
        "received_instances_per_s": round(len(sent["successes"]) / max(last_ok - first, 1e-9), 1),
        "end_to_end_s": round(end - first, 2),
        "end_to_end_instances_per_s": round(len(sent["successes"]) / max(end - first, 1e-9), 2),
        "cstore_to_result_s_median": round(percentile(latencies, 0.5), 2) if latencies else None,
        "cstore_to_result_s_p95": round(percentile(latencies, 0.95), 2) if latencies else None,
    }


def load_passed(summary: dict[str, Any]) -> bool:
    return (
        summary["scu"]["successes"] == summary["instances"]
        and summary["scu"]["failures"] == 0
        and summary["lost_count"] == 0
        and summary["phi_hit_count"] == 0
        and summary["gateway"]["limit_respected"]
        and summary["store"]["distinct_successes"] == summary["store"]["objects"] == summary["instances"]
        and (summary["receive_only"] or summary["store"]["results"] == summary["store"]["runs_succeeded"] == summary["instances"])
    )


# --- C-STORE -> SR in the PACS (Orthanc) ------------------------------------------------------------------------

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22")  # Comprehensive 3D SR, Enhanced SR


def sr_delivery(delivery: str, pacs_dimse: int, pacs_http: int) -> dict[str, str | None]:
    """How a study's SR reaches the PACS in this bench: the workflow's DeliverResults task (services/export/deliver.py)
    sends it to the destinations in the settings, by C-STORE or by STOW-RS."""
    return {
        "export_dicom_peer": f"ORTHANC@127.0.0.1:{pacs_dimse}" if delivery == "dimse" else None,
        "export_stow_url": f"http://127.0.0.1:{pacs_http}/dicom-web/studies" if delivery == "stow" else None,
    }


def srs_in_orthanc(url: str) -> set[str]:
    """StudyInstanceUIDs of the SRs Orthanc holds, by QIDO-RS (one instance-level query across studies)."""
    found: set[str] = set()
    for sop_class in SR_CLASSES:
        request = urllib.request.Request(
            f"{url}/dicom-web/instances?SOPClassUID={sop_class}&includefield=0020000D", headers={"Accept": "application/dicom+json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        for item in json.loads(body) if body else []:
            found.update(item.get("0020000D", {}).get("Value", []))
    return found


def orthanc_latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pydicom

    from radstream.orthanc import Orthanc, free_port

    flag = {"jpeg-ls-lossless": "-xt", "explicit-le": "-xe", "jpeg2000-lossless": "-xv"}[args.syntax]
    work.mkdir(parents=True, exist_ok=True)
    files, uid_of_key = [], {}
    from services.gateway.domain import study_id_for

    for i in range(args.instances):
        data = cr_instance(args.syntax, seed=i, size=args.size)
        path = work / f"cr{i}.dcm"
        path.write_bytes(data)
        files.append(path)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        study_id, instance = study_id_for(KEY.encode(), ds.StudyInstanceUID, ds.SOPInstanceUID)
        uid_of_key[f"incoming/{study_id}/{instance}.dcm"] = ds.StudyInstanceUID
    pacs_dimse, pacs_http = free_port(), free_port()
    settings = Settings(
        data_dir=work / "data",
        gateway_dimse_port=0,
        gateway_http_port=0,
        gateway_pseudonym_key=KEY,
        **sr_delivery(args.delivery, pacs_dimse, pacs_http),
    )
    stored_at: dict[str, float] = {}
    found_at: dict[str, float] = {}
    with LocalRuntime(settings, workers=args.workers) as runtime:
        pipeline = LocalPipeline(runtime, workers=args.workers)

        def on_stored(received: Any) -> None:
            stored_at[uid_of_key[received.key]] = time.time()
            pipeline(received)

        with Gateway(settings, store=runtime.store, on_stored=on_stored) as gateway:
            orthanc = Orthanc(work / "orthanc", pacs_dimse, pacs_http)
            try:
                stop = threading.Event()

                def poll() -> None:
                    while not stop.is_set() and len(found_at) < args.instances:
                        now = time.time()
                        for uid in srs_in_orthanc(orthanc.url) - found_at.keys():
                            found_at[uid] = now
                        stop.wait(0.05)

                poller = threading.Thread(target=poll, name="qido-poll", daemon=True)
                poller.start()
                started = time.perf_counter()
                wall = send(gateway.dimse.port, files, flag)
                outcomes = [f.result(timeout=args.deadline_s) for f in list(pipeline.futures.values())]
                poller.join(timeout=60)
                stop.set()
                total = time.perf_counter() - started
                pipeline.close()
            finally:
                orthanc.stop()
    latencies = [found_at[uid] - stored_at[uid] for uid in stored_at if uid in found_at]
    return {
        "mode": "orthanc",
        "date": time.strftime("%Y-%m-%d"),
        "instances": args.instances,
        "syntax": args.syntax,
        "image_size": args.size,
        "delivery": args.delivery,
        "pipeline_workers": args.workers,
        "bytes_per_instance": files[0].stat().st_size,
        "stored": len(stored_at),
        "succeeded": sum(o.status == "succeeded" for o in outcomes),
        "srs_found_in_orthanc": len(found_at),
        "storescu_s": round(wall, 2),
        "received_instances_per_s": round(args.instances / wall, 1),
        "end_to_end_s": round(total, 2),
        "end_to_end_instances_per_s": round(args.instances / total, 2),
        "cstore_to_sr_in_orthanc_s_median": round(percentile(latencies, 0.5), 2) if latencies else None,
        "cstore_to_sr_in_orthanc_s_p95": round(percentile(latencies, 0.95), 2) if latencies else None,
        "poll_interval_s": 0.05,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--syntax", default="jpeg-ls-lossless")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--load", action="store_true", help="many concurrent associations; 0 lost, limit held, PHI scan")
    p.add_argument("--associations", type=int, default=200)
    p.add_argument("--max-associations", type=int, default=10, help="GATEWAY_MAX_ASSOCIATIONS")
    p.add_argument("--receive-only", action="store_true", help="--load without the pipeline: the gateway's own rate")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: 128 for --load, 320 otherwise)")
    p.add_argument("--orthanc", action="store_true", help="C-STORE -> SR found in Orthanc by QIDO-RS")
    p.add_argument("--delivery", choices=["stow", "dimse"], default="stow")
    p.add_argument("--deadline-s", type=float, default=3600)
    p.add_argument("--work-dir", type=Path, default=None, help="keep the run's files here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    # The SCU side of --load, run by the bench in its own process.
    p.add_argument("--scu-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--transfer-syntax", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.scu_worker:
        return scu_worker(args)
    if not (args.load or args.orthanc):
        return throughput(args)
    if args.size is None:
        args.size = 128 if args.load else 320
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = load(args, work) if args.load else orthanc_latency(args, work)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.load:
        return 0 if load_passed(summary) else 1
    return 0 if summary["srs_found_in_orthanc"] == summary["succeeded"] == args.instances else 1


if __name__ == "__main__":
    raise SystemExit(main())
