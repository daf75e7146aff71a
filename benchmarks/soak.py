"""Soak the local pipeline under faults and prove the promise: nothing lost, nothing duplicated, nothing misattributed.

    .venv/bin/python benchmarks/soak.py                      # 10,000 studies at 512x512 (~12 min, 13 GB of disk)
    .venv/bin/python benchmarks/soak.py --short              # ~60 studies at 256x256, under 2 minutes (tests/e2e/test_soak.py)
    .venv/bin/python benchmarks/soak.py --budgets            # only the retry-budget arithmetic (docs/reliability.md)

The studies (write_demo_studies: valid phantoms, one DICOM, four broken on purpose `bad-*`) are run by
`radstream run` / `radstream resume` as subprocesses, the way a person runs them, on this schedule:

 1. `radstream run` is SIGKILLed at a random point (after a random share of the studies ended);
 2. `radstream resume` is interrupted with SIGINT (Ctrl-C): it must exit 3 and print its summary;
 3. `radstream resume` while the local Triton (`radstream serve-models`) is SIGKILLed and restarted ~7 s
    later: in-flight inference retries must outlast the outage; in the long soak this resume is also SIGKILLed;
 4. `radstream resume` to finish what the faults left (uploads that failed, results that could not be read back);
 5. a duplicate upload (another folder claiming a finished study's id with another image): refused, the
    original result untouched; and a re-run of finished folders (a valid one and a broken one);
 6. `radstream resume` again until nothing is left; then the audit.

Every runner subprocess gets RADSTREAM_FAULTS, so the local object store fails a share of reads and writes
the way a full disk (ENOSPC), a throttled S3 (SlowDown) and a timeout do.

The audit reads only what the product wrote (results bucket, telemetry lake, logs, traces) and counts:
lost, duplicated, telemetry against the contract, misattributed log lines / telemetry records / traces.
It exits 1 when an invariant breaks, 0 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic.phantoms import generate_phantom  # noqa: E402
from synthetic.samples import encode, sidecar, write_demo_studies, write_study  # noqa: E402
from radstream.triton_server import free_port  # noqa: E402

# The studies write_demo_studies breaks on purpose, and the failure each must end with.
EXPECTED_FAILURES = {
    "bad-phi": ("validate", "InvalidStudy"),
    "bad-format": ("validate", "InvalidImage"),
    "bad-digest": ("validate", "InvalidImage"),
    "bad-constant": ("prepare", "InvalidImage"),
}
PIPELINE = ("validate", "prepare", "inference", "store", "export")
MODELS = 3  # one inference record per model: classifier, detector, encoder
EXIT_INTERRUPTED = 3
DEFAULT_FAULTS = "enospc=0.01,throttle=0.01,timeout=0.005"


# --- retry budgets (docs/reliability.md) ---------------------------------------------------------------
def retry_delays_caps(interval: float, attempts: int, backoff: float, max_delay: float | None) -> list[float]:
    """The cap of each retry's delay as the ASL interpreter (and Step Functions) computes it: interval * backoff^n, capped."""
    return [min(interval * backoff**n, max_delay) if max_delay else interval * backoff**n for n in range(attempts)]


QUANTILES = (0.001, 0.01, 0.05, 0.5)


def exact_quantiles(caps: list[float], step: float = 0.001) -> dict[float, float]:
    """Quantiles of a sum of uniform(0, cap) waits, by convolving their densities on a 1 ms grid (no sampling noise)."""
    import numpy as np

    density = np.array([1.0])
    for cap in caps:
        width = max(1, round(cap / step))
        density = np.convolve(density, np.full(width, 1.0 / width))
    cdf = np.cumsum(density)
    return {q: float(np.searchsorted(cdf, q) * step) for q in QUANTILES}


def budget_table(samples: int = 1_000_000, seed: int = 1) -> list[dict]:
    """Each distinct Retry of template.yaml: the caps, their sum, the mean, and Monte Carlo quantiles of the total wait (full jitter)."""
    import numpy as np

    from radstream.template import Template

    found: dict[tuple, set[str]] = defaultdict(set)

    def walk(states: dict) -> None:
        for name, state in states.items():
            for retrier in state.get("Retry", []):
                key = (
                    tuple(retrier["ErrorEquals"]),
                    retrier.get("IntervalSeconds", 1),
                    retrier.get("MaxAttempts", 3),
                    retrier.get("BackoffRate", 2.0),
                    retrier.get("MaxDelaySeconds"),
                    retrier.get("JitterStrategy", "NONE"),
                )
                found[key].add(name)
            for branch in state.get("Branches", []):
                walk(branch["States"])

    walk(Template().definition()["States"])
    rng = np.random.default_rng(seed)
    rows = []
    for (errors, interval, attempts, backoff, max_delay, jitter), states in sorted(found.items(), key=lambda kv: -kv[0][2]):
        caps = retry_delays_caps(interval, attempts, backoff, max_delay)
        row = {
            "errors": errors[0] + (f" (+{len(errors) - 1})" if len(errors) > 1 else ""),
            "states": sorted(states),
            "retries": attempts,
            "caps": caps,
            "sum": sum(caps),
            "jitter": jitter,
        }
        if jitter == "FULL":
            total = np.zeros(samples)
            for cap in caps:
                total += rng.uniform(0.0, cap, samples)
            row |= {"mean": float(total.mean()), "mc": {q: float(np.quantile(total, q)) for q in QUANTILES}, "exact": exact_quantiles(caps)}
        else:
            row |= {"mean": sum(caps)}
        rows.append(row)
    return rows


def print_budgets(rows: list[dict]) -> None:
    print("retry budgets from template.yaml; full jitter: retry n waits uniform(0, cap_n), cap_n = min(interval * backoff^n, max delay)")
    print("total wait quantiles: exact (densities convolved on a 1 ms grid) / Monte Carlo (1e6 draws)")
    print(f"{'errors':24} {'retries':>7}  {'caps (s)':34} {'sum':>5} {'mean':>5}  " + "  ".join(f"{f'{q:.1%} <':>11}" for q in QUANTILES))
    for r in rows:
        caps = ",".join(f"{c:g}" for c in r["caps"])
        cells = "  ".join(f"{r['exact'][q]:>5.1f}/{r['mc'][q]:<5.1f}" for q in QUANTILES) if "exact" in r else ""
        print(f"{r['errors']:24} {r['retries']:>7}  {caps:34} {r['sum']:>5.1f} {r['mean']:>5.1f}  {cells}")


# --- processes ------------------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Triton:
    """`radstream serve-models` on free ports; `crash()` SIGKILLs the tritonserver it started (its own process group)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []  # seconds from launch to ready, per start
        self.log = work / "serve-models.log"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, deadline_s: float = 120.0) -> float:
        for attempt in range(3):  # a port the killed server held can take a moment to be bindable again
            began = time.monotonic()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "radstream.cli",
                        "serve-models",
                        "--http-port",
                        str(self.http),
                        "--grpc-port",
                        str(self.grpc),
                        "--metrics-port",
                        str(self.metrics),
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            while time.monotonic() - began < deadline_s:
                if self.ready():
                    self.starts.append(time.monotonic() - began)
                    return self.starts[-1]
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
            self.stop()
            time.sleep(1.0 + attempt)
        raise SystemExit(f"soak: Triton did not become ready; see {self.log}")

    def crash(self) -> None:
        """What a crashed pod looks like: the server dies at once (SIGKILL), mid-request; serve-models then exits."""
        assert self.process is not None
        for child in children(self.process.pid):
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # serve-models stops its server and returns
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for child in children(self.process.pid):
                    try:
                        os.killpg(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def journal_progress(path: Path) -> tuple[int | None, int]:
    """(studies the run planned, studies it has journalled as ended), read as resume reads a journal."""
    from radstream.journal import read_journal

    lines = [line for _, line in read_journal(path)[0]]
    planned = next(
        (len(line["studies"]) if isinstance(line["studies"], list) else line["studies"] for line in lines if "run" in line), None
    )
    return planned, sum("status" in line for line in lines)


@dataclass
class Step:
    """One runner subprocess and what happened to it."""

    name: str
    argv: list[str]
    rc: int | None = None
    wall_s: float = 0.0
    ended_studies: int = 0  # journal outcome lines it wrote
    signalled: str | None = None
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.data = work / "data"
        self.studies_dir = work / "studies"
        self.random = random.Random(args.seed)
        self.triton: Triton | None = None
        self.steps: list[Step] = []
        self.invariants: list[str] = []  # what broke, in words
        self.triton_outages: list[float] = []
        self.faults_seed = args.seed

    # --- runner subprocesses ---
    def runner(
        self,
        name: str,
        command: list[str],
        *,
        kill_at: float | None = None,
        sig: int = signal.SIGKILL,
        triton_outage_at: float | None = None,
        expected_total: int | None = None,
        deadline_s: float = 3600,
    ) -> Step:
        """Run `radstream COMMAND` with faults; send `sig` once `kill_at` (a share of expected_total) of the studies ended.

        Progress is read from the journal the run writes (one line per study that ended), as a person would.
        """
        self.faults_seed += 1
        env = dict(os.environ, RADSTREAM_FAULTS=f"{self.args.faults},seed={self.faults_seed}" if self.args.faults else "")
        if not self.args.faults:
            env.pop("RADSTREAM_FAULTS")
        argv = [
            sys.executable,
            "-m",
            "radstream.cli",
            *command,
            "--data-dir",
            str(self.data),
            "--workers",
            str(self.args.workers),
            "--quiet",
            "--json",
        ]
        if self.triton:
            argv += ["--triton-url", self.triton.grpc_url]
        step = Step(name, argv)
        journal_dir = self.data / "journal"
        before = set(journal_dir.glob("*.jsonl")) if journal_dir.is_dir() else set()
        out_path, err_path = self.work / f"{len(self.steps):02d}-{name}.out", self.work / f"{len(self.steps):02d}-{name}.err"
        began = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            journal: Path | None = None
            total = expected_total
            kill_target = triton_target = None
            restart: threading.Thread | None = None
            while process.poll() is None:
                if time.monotonic() - began > deadline_s:
                    process.kill()
                    process.wait()
                    raise SystemExit(f"soak: {name} ran past {deadline_s:.0f}s; see {err_path}")
                if journal is None and journal_dir.is_dir():
                    new = sorted(set(journal_dir.glob("*.jsonl")) - before)
                    journal = new[0] if new else None
                if journal is not None:
                    planned, ended = journal_progress(journal)
                    total = total if total is not None else planned
                    if total:
                        if kill_at is not None and kill_target is None:
                            kill_target = max(1, int(total * kill_at))
                        if triton_outage_at is not None and triton_target is None:
                            triton_target = max(1, int(total * triton_outage_at))
                    if triton_target is not None and restart is None and ended >= triton_target and self.triton:
                        restart = threading.Thread(target=self.triton_outage, daemon=True)
                        restart.start()
                    if kill_target is not None and step.signalled is None and ended >= kill_target:
                        time.sleep(self.random.uniform(0, 0.3))  # land inside a study, not between two
                        if process.poll() is None:
                            process.send_signal(sig)
                            step.signalled = signal.Signals(sig).name
                            step.notes.append(f"{step.signalled} after {ended} of {total} studies ended")
                time.sleep(0.05)
            step.rc = process.returncode
            if restart is not None:
                restart.join()
        step.wall_s = time.monotonic() - began
        if journal is None:
            new = sorted(set(journal_dir.glob("*.jsonl")) - before) if journal_dir.is_dir() else []
            journal = new[0] if new else None
        step.ended_studies = journal_progress(journal)[1] if journal else 0
        try:
            step.summary = json.loads(out_path.read_text())
        except ValueError:
            step.summary = None
        self.steps.append(step)
        print(f"  {name}: rc={step.rc} ended={step.ended_studies} in {step.wall_s:.1f}s {'; '.join(step.notes)}", flush=True)
        return step

    def triton_outage(self) -> None:
        assert self.triton is not None
        down_at = time.monotonic()
        try:
            self.triton.crash()
            time.sleep(self.args.triton_down)
            self.triton.start()
        except BaseException as e:
            self.invariants.append(f"Triton outage: {type(e).__name__}: {e}")
            return
        self.triton_outages.append(time.monotonic() - down_at)

    def resume_until_done(self, label: str, limit: int = 6) -> None:
        """`radstream resume` until one runs nothing that can still change (no study, or only permanent refusals)."""
        for i in range(limit):
            step = self.runner(f"{label}-{i + 1}", ["resume"])
            if step.rc not in (0, 1):
                self.invariants.append(f"{step.name} exited {step.rc}, expected 0 or 1")
                return
            if step.summary is None:
                self.invariants.append(f"{step.name} printed no JSON summary")
                return
            if step.summary["totals"]["studies"] == 0:
                return
        self.invariants.append(f"{label}: {limit} resumes and still studies left to finish")

    # --- the schedule ---
    def prepare(self) -> None:
        began = time.monotonic()
        folders = write_demo_studies(self.studies_dir, self.args.studies, size=self.args.size, seed=self.args.seed)
        self.folders = folders
        print(
            f"wrote {len(folders)} studies ({self.args.studies} valid + 1 DICOM + {len(EXPECTED_FAILURES)} broken on purpose) "
            f"at {self.args.size}x{self.args.size} in {time.monotonic() - began:.1f}s",
            flush=True,
        )

    def run(self) -> None:
        args = self.args
        total = len(self.folders)
        if not args.no_triton:
            self.triton = Triton(self.work)
            first = self.triton.start()
            print(f"Triton ready in {first:.1f}s ({self.triton.grpc_url})", flush=True)
        # 1. a crash of the runner at a random point
        self.runner("run-sigkill", ["run", str(self.studies_dir)], kill_at=self.random.uniform(0.1, 0.4), expected_total=total)
        # 2. Ctrl-C: in-flight studies finish, the rest are reported; exit 3 with the summary
        step = self.runner("resume-sigint", ["resume"], kill_at=self.random.uniform(0.05, 0.3), sig=signal.SIGINT)
        if step.signalled:
            totals = (step.summary or {}).get("totals", {})
            if step.rc != EXIT_INTERRUPTED or not totals.get("interrupted"):
                self.invariants.append(
                    f"Ctrl-C: exit {step.rc} (expected {EXIT_INTERRUPTED}) with summary interrupted={totals.get('interrupted')}"
                )
        else:
            step.notes.append("ended before the SIGINT could land")
        # 3. Triton crashes and comes back mid-run; the long soak also kills the runner a second time
        self.runner(
            "resume-triton-outage" if self.triton else "resume-mid",
            ["resume"],
            triton_outage_at=0.02 if self.triton else None,
            kill_at=None if args.short else self.random.uniform(0.5, 0.8),
        )
        # 4. finish (what is left: studies the faults stopped outside the workflow; step 6 proves nothing is left)
        self.runner("resume", ["resume"])
        # 5. a duplicate upload and re-runs
        self.duplicate_and_rerun()
        # 6. finish what the faults left of those
        self.resume_until_done("resume-final")

    def duplicate_and_rerun(self) -> None:
        results = self.data / "results" / "results"
        finished = sorted(p.name for p in results.iterdir() if (p / "result.json").is_file() and not p.name.startswith("bad-"))
        target = self.random.choice(finished)
        self.dup_target = target
        self.dup_before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (results / target).iterdir()}
        self.dup_input_before = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (self.data / "images" / "incoming" / target).iterdir()
        }
        import numpy as np

        rng = np.random.default_rng(self.args.seed + 1)
        name, data = encode(generate_phantom(rng, size=self.args.size).image, 0)
        dup = write_study(self.work / "duplicates" / f"dup-of-{target}", sidecar(target, name, rng, data), name, data)
        step = self.runner("duplicate-upload", ["run", str(dup)])
        outcome = ((step.summary or {}).get("studies") or [{}])[0]
        self.dup_outcome = outcome
        if step.rc != 1 or outcome.get("error_type") != "StudyConflict":
            self.invariants.append(
                f"duplicate upload of {target}: exit {step.rc}, {outcome.get('error_type')} (expected exit 1, StudyConflict)"
            )
        # Re-runs: finished folders (a valid one, the DICOM, a broken one) run again as they are.
        rerun = self.work / "rerun"
        for name in (self.random.choice(finished), "demo-dicom", "bad-digest"):
            shutil.copytree(self.studies_dir / name, rerun / name, dirs_exist_ok=True)
        self.rerun_ids = sorted(p.name for p in rerun.iterdir())
        step = self.runner("rerun-finished", ["run", str(rerun)])
        if step.rc not in (0, 1):
            self.invariants.append(f"re-run of finished folders exited {step.rc}")

    # --- the audit ---
    def audit(self) -> dict:
        results_bucket = self.data / "results"
        valid = {f.name for f in self.folders if not f.name.startswith("bad-")}
        known = valid | set(EXPECTED_FAILURES)
        result_ids = {p.parent.name for p in (results_bucket / "results").glob("*/result.json")}
        failure_ids = {p.parent.name for p in (results_bucket / "failed").glob("*/error.json")}
        figures: dict = {"studies": len(known), "results": len(result_ids & known), "failure records": len(failure_ids & known)}
        problems: dict[str, list[str]] = defaultdict(list)

        records: dict[str, dict] = {}
        for study_id in result_ids:
            doc = json.loads((results_bucket / "results" / study_id / "result.json").read_text())
            dicom = doc["input"]["image"]["key"].endswith(".dcm")
            records[study_id] = {"kind": "result", "execution_id": doc["execution_id"], "dicom": dicom}
            if doc["study_id"] != study_id:
                problems["misfiled"].append(f"results/{study_id}/result.json names {doc['study_id']}")
            # A DICOM study's result comes with its exports for the hospital (ExportResults): the SR, the overlay and the FHIR
            # bundle, and exports.json, what became of them (built, delivered, or why not).
            exports = ("report.sr.dcm", "report.overlay.dcm", "report.fhir.json", "exports.json")
            # NotifyCriticalFindings files the rules that fired (and their delivery) beside the result the rules read.
            notified = ("notifications.json",) if doc.get("critical_findings") else ()
            allowed = ("result.json", "report.txt") + (exports if dicom else ()) + notified
            extra = sorted(p.name for p in (results_bucket / "results" / study_id).iterdir() if p.name not in allowed)
            if extra:
                problems["duplicated"].append(f"{study_id}: extra files beside its result: {extra}")
        failures_by_type: Counter[str] = Counter()
        for study_id in failure_ids:
            doc = json.loads((results_bucket / "failed" / study_id / "error.json").read_text())
            failures_by_type[doc["error_type"]] += 1
            if doc["study_id"] != study_id:
                problems["misfiled"].append(f"failed/{study_id}/error.json names {doc['study_id']}")
            if study_id in result_ids:
                problems["duplicated"].append(f"{study_id}: a result and a failure record ({doc['error_type']})")
            else:
                records[study_id] = {
                    "kind": "failure",
                    "execution_id": doc["execution_id"],
                    "stage": doc["stage"],
                    "error_type": doc["error_type"],
                }
        for study_id in sorted(known):
            if study_id not in result_ids and study_id not in failure_ids:
                problems["lost"].append(f"{study_id}: neither result nor failure record")
            elif study_id in valid and study_id not in result_ids:
                problems["lost"].append(f"{study_id}: valid, but only a failure record ({records[study_id]['error_type']})")
            elif study_id in EXPECTED_FAILURES:
                expected = EXPECTED_FAILURES[study_id]
                if study_id in result_ids:
                    problems["lost"].append(f"{study_id}: broken on purpose, but it has a result")
                elif (records[study_id]["stage"], records[study_id]["error_type"]) != expected:
                    problems["lost"].append(
                        f"{study_id}: expected {expected}, recorded {(records[study_id]['stage'], records[study_id]['error_type'])}"
                    )
        for study_id in (result_ids | failure_ids) - known:
            problems["unknown"].append(f"{study_id}: a record for a study nobody uploaded")
        figures["failures by type"] = dict(sorted(failures_by_type.items()))

        # The duplicate upload left the original untouched, and recorded nothing under its id.
        target = self.dup_target
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (results_bucket / "results" / target).iterdir()}
        inputs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (self.data / "images" / "incoming" / target).iterdir()}
        if inputs != self.dup_input_before:
            problems["duplicate accepted"].append(f"{target}: its uploaded input changed")
        if after != self.dup_before and target not in self.rerun_ids:
            problems["duplicate accepted"].append(f"{target}: its result changed after the duplicate upload")
        if target in failure_ids:
            problems["duplicated"].append(f"{target}: the refused duplicate left a failure record beside the result")

        # Telemetry: the lake, deduplicated by event_id; the counted execution of each study against the contract.
        lake: dict[str, dict] = {}
        copies = 0
        for f in sorted((self.data / "telemetry").rglob("*.json.gz")):
            for line in gzip.decompress(f.read_bytes()).splitlines():
                r = json.loads(line)
                seen = lake.get(r["event_id"])
                if seen is not None:
                    copies += 1
                    same = all(seen[k] == r[k] for k in ("study_id", "execution_id", "stage", "status", "model_name"))
                    if not same:
                        problems["telemetry event_id collision"].append(f"{r['event_id']}: two different records")
                    continue
                lake[r["event_id"]] = r
        by_execution: dict[str, list[dict]] = defaultdict(list)
        for r in lake.values():
            by_execution[r["execution_id"]].append(r)
            if not execution_belongs(r["execution_id"], r["study_id"]):
                problems["misattributed telemetry"].append(f"{r['event_id']}: study {r['study_id']}, execution {r['execution_id']}")
        telemetry_ok = 0
        for study_id, record in sorted(records.items()):
            if study_id not in known:
                continue
            got = by_execution.get(record["execution_id"], [])
            expected = expected_telemetry(record)
            actual = Counter((r["stage"], r["status"]) for r in got)
            models = {r["model_name"] for r in got if r["stage"] == "inference" and r["status"] == "succeeded"}
            if expected is None:
                problems["telemetry contract"].append(f"{study_id}: its record names no workflow execution ({record['execution_id']})")
            elif (
                actual != expected
                or (expected.get(("inference", "succeeded")) and len(models) != MODELS)
                or any(r["study_id"] != study_id for r in got)
            ):
                problems["telemetry contract"].append(f"{study_id}: {dict(actual)} != {dict(expected)}")
            else:
                telemetry_ok += 1
        figures["telemetry records (after dedupe)"] = len(lake)
        figures["telemetry copies dropped by dedupe"] = copies
        figures["studies whose telemetry meets the contract"] = telemetry_ok

        # Logs: every line JSON, naming its study and an execution of that study.
        log_lines = 0
        retried: dict[str, set[str]] = defaultdict(set)
        attempts: Counter[str] = Counter()
        for number, text in enumerate((self.data / "logs" / "radstream.log").read_text(errors="replace").splitlines(), 1):
            log_lines += 1
            try:
                line = json.loads(text)
            except ValueError:
                problems["misattributed log lines"].append(f"line {number}: not JSON: {text[:120]!r}")
                continue
            study_id, execution_id = line.get("study_id"), line.get("execution_id")
            if not study_id or not execution_id or not execution_belongs(execution_id, study_id):
                problems["misattributed log lines"].append(
                    f"line {number}: study {study_id!r}, execution {execution_id!r}: {line.get('message')}"
                )
            if line.get("message") == "stage failed" and line.get("retryable"):
                attempts[line["error_type"]] += 1
                retried[line["error_type"]].add(str(study_id))
        figures["log lines"] = log_lines
        figures["failed attempts retried"] = {k: (attempts[k], len(retried[k])) for k in sorted(attempts)}

        # Traces: traces/<study_id>/<execution>.json names that study and an execution of it.
        traces = 0
        for path in sorted((self.data / "traces").glob("*/*.json")):
            traces += 1
            doc = json.loads(path.read_text())
            study_id, execution = doc["annotations"].get("study_id"), doc["annotations"].get("execution")
            if study_id != path.parent.name or path.stem != execution or not execution_belongs(execution, study_id):
                problems["misattributed traces"].append(f"{path.relative_to(self.data)}: study {study_id}, execution {execution}")
        figures["traces"] = traces

        # Debris: a write killed mid-way leaves a temp file in .staging/ only (never beside an object), and the
        # next run sweeps it; after the final resume nothing of the kind is left anywhere in the data dir.
        for path in sorted(self.data.rglob("*")):
            if path.is_file() and (path.name.startswith(".tmp-") or path.parent.name == ".staging"):
                problems["debris"].append(f"{path.relative_to(self.data)}: a temp file a killed write left behind")
        return {"figures": figures, "problems": problems}


def execution_belongs(execution_id: str, study_id: str) -> bool:
    """An execution is named `<study_id>-<8 hex>` (radstream/runtime.py start()); its id is an ARN ending in that name."""
    name = execution_id.rsplit(":", 1)[-1]
    return study_id in execution_id and re.fullmatch(re.escape(study_id) + r"-[0-9a-f]{8}", name) is not None


def expected_telemetry(record: dict) -> Counter | None:
    """What the counted execution must have sent: every stage once (inference once per model) and one workflow record;
    a failed one: the stages before the failure, one failed record, and a failed workflow record."""
    if record["execution_id"] in ("none", "", None):
        return None
    if record["kind"] == "result":
        expected = Counter(
            {
                ("validate", "succeeded"): 1,
                ("prepare", "succeeded"): 1,
                ("inference", "succeeded"): MODELS,
                ("store", "succeeded"): 1,
                ("notify", "succeeded"): 1,  # NotifyCriticalFindings runs for every stored result
                ("workflow", "succeeded"): 1,
            }
        )
        if record.get("dicom"):
            expected[("export", "succeeded")] = 1  # ExportResults runs for DICOM studies only
        return expected
    expected: Counter = Counter()
    for stage in PIPELINE:
        if stage == record["stage"]:
            break
        expected[(stage, "succeeded")] = MODELS if stage == "inference" else 1
    expected[(record["stage"], "failed")] = 1
    expected[("workflow", "failed")] = 1
    return expected


def print_report(soak: Soak, audit: dict, wall_s: float) -> None:
    figures, problems = audit["figures"], audit["problems"]
    print()
    print("step                      rc  studies ended  wall s   note")
    for s in soak.steps:
        print(f"{s.name:24} {str(s.rc):>3}  {s.ended_studies:>13}  {s.wall_s:>6.1f}   {'; '.join(s.notes)}")
    if soak.triton:
        print(
            f"Triton: started in {', '.join(f'{t:.1f}' for t in soak.triton.starts)} s; outages (kill to ready again): "
            f"{', '.join(f'{t:.1f}' for t in soak.triton_outages) or 'none'} s"
        )
    print()
    rows = [
        ("studies", figures["studies"]),
        ("results", figures["results"]),
        ("failure records", figures["failure records"]),
        *((f"  {k}", v) for k, v in figures["failures by type"].items()),
        ("lost", len(problems["lost"])),
        ("duplicated", len(problems["duplicated"])),
        ("misfiled", len(problems["misfiled"])),
        ("unknown studies", len(problems["unknown"])),
        ("duplicate upload accepted", len(problems["duplicate accepted"])),
        ("telemetry records (deduped)", figures["telemetry records (after dedupe)"]),
        ("  copies dropped by dedupe", figures["telemetry copies dropped by dedupe"]),
        ("  studies meeting contract", figures["studies whose telemetry meets the contract"]),
        ("telemetry contract broken", len(problems["telemetry contract"])),
        ("telemetry id collisions", len(problems["telemetry event_id collision"])),
        ("misattributed telemetry", len(problems["misattributed telemetry"])),
        ("failed task attempts (retryable)", sum(n for n, _ in figures["failed attempts retried"].values())),
        *((f"  {k} (studies)", f"{n} ({m})") for k, (n, m) in figures["failed attempts retried"].items()),
        ("log lines", figures["log lines"]),
        ("misattributed log lines", len(problems["misattributed log lines"])),
        ("traces", figures["traces"]),
        ("misattributed traces", len(problems["misattributed traces"])),
        ("temp files left behind", len(problems["debris"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v:>8}")
    processed = sum(s.ended_studies for s in soak.steps)
    print(
        f"wall time {wall_s:.1f} s; {figures['studies'] / wall_s * 60:.0f} studies/min end to end "
        f"({processed} study runs, re-runs and resumes included)"
    )
    broken = [k for k, v in problems.items() if v] + (["schedule"] if soak.invariants else [])
    for line in soak.invariants:
        print(f"INVARIANT: {line}")
    for kind, items in problems.items():
        for item in items[:10]:
            print(f"{kind}: {item}")
        if len(items) > 10:
            print(f"{kind}: ... {len(items) - 10} more")
    print("soak: " + ("OK: nothing lost, nothing duplicated, nothing misattributed" if not broken else f"FAILED: {', '.join(broken)}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, help="valid studies (default 10000; 60 with --short)")
    p.add_argument("--size", type=int, help="image side in pixels (default 512; 256 with --short)")
    p.add_argument("--workers", type=int, default=8, help="studies each runner runs at once (default 8)")
    p.add_argument("--short", action="store_true", help="the quick version for the test suite: 60 studies at 256x256, one SIGKILL")
    p.add_argument("--no-triton", action="store_true", help="in-process ONNX Runtime instead of a local Triton (no Triton outage)")
    p.add_argument("--triton-down", type=float, default=7.0, help="seconds Triton stays down after its crash (default 7)")
    p.add_argument(
        "--faults", default=DEFAULT_FAULTS, help=f"RADSTREAM_FAULTS for the runners, without seed (default {DEFAULT_FAULTS}; '' for none)"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--work-dir", help="where to put the studies and the data dir (default: a temporary folder, removed when the soak passes)"
    )
    p.add_argument("--budgets", action="store_true", help="print the retry-budget arithmetic of template.yaml and exit")
    args = p.parse_args(argv)
    if args.budgets:
        print_budgets(budget_table())
        return 0
    args.studies = args.studies if args.studies is not None else (60 if args.short else 10_000)
    args.size = args.size if args.size is not None else (256 if args.short else 512)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="radstream-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {args.studies} studies at {args.size}x{args.size}, {args.workers} workers, faults {args.faults or 'none'}, "
        f"Triton {'off' if args.no_triton else 'on'}; work dir {work}",
        flush=True,
    )
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec: the runners
    # would never see the Ctrl-C. A handler of our own is reset to the default in each child, as at a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    soak = Soak(args, work)
    began = time.monotonic()
    try:
        soak.prepare()
        soak.run()
    finally:
        if soak.triton:
            soak.triton.stop()
    audit = soak.audit()
    print_report(soak, audit, time.monotonic() - began)
    ok = not soak.invariants and not any(audit["problems"].values())
    if ok and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        print(f"soak: kept {work} for inspection")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
