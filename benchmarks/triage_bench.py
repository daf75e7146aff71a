"""Triage under a backlog: a flood of routine studies, stat studies dripped in at random times, one RIS listening.

    .venv/bin/python benchmarks/triage_bench.py --routine 2000 --stat 20 --workers 1 2

For each worker count, a fresh runtime with NOTIFY_MLLP_PEER set to an MLLP listener on loopback (a RIS that
validates every ORU strictly and files it) takes studies from the scheduler's queue (shared/scheduling.py), as the
gateway does: the whole routine backlog arrives at once, then the stat studies arrive one by one at uniformly random
times while the backlog is being worked through. Every study carries findings that fire the critical-finding rules,
so each one is notified. Arrival is when the study was queued; result is its result's completed_at; notification is
when the RIS received its first ORU. Printed: arrival-to-result and arrival-to-notification p50/p95/max by priority,
and the routine studies' worst wait beside the bound the scheduler states.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import encode, sidecar, write_study
from shared.scheduling import HEAD_START_S, Dispatcher, StudyQueue
from shared.settings import Settings
from synthetic.mllp_peer import MllpPeer  # the tests' RIS: strict hl7apy validation, files each MSH-10 once


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def write_studies(root: Path, routine: int, stat: int, size: int) -> tuple[list[Path], list[Path]]:
    """One phantom with findings, written under every study id (the pipeline does its whole work for each)."""
    rng = np.random.default_rng(24)
    image = generate_phantom(rng, size=size, findings=["Pleural Effusion", "Edema", "Consolidation"]).image
    name, data = encode(image, 0)

    def study(study_id: str, level: str) -> Path:
        return write_study(root / study_id, sidecar(study_id, name, rng, data) | {"priority": level}, name, data)

    return [study(f"routine-{i:05d}", "routine") for i in range(routine)], [study(f"stat-{i:03d}", "stat") for i in range(stat)]


def study_of_oru(er7: str) -> str:
    obr = next(line for line in er7.split("\r") if line.startswith("OBR|")).split("|")
    return obr[3].split("^")[0]


def run(routine: list[Path], stat: list[Path], warmup: list[Path], workers: int, root: Path, seed: int) -> dict:
    with MllpPeer() as peer:
        settings = Settings(data_dir=root / f"data-w{workers}", notify_mllp_peer=peer.address)
        with LocalRuntime(settings, workers=workers) as runtime:
            started = time.perf_counter()
            runtime.run_many(warmup)  # cold start (model sessions, imports) out of the figures
            per_study = (time.perf_counter() - started) / len(warmup)
            # The stat studies arrive while about 80% of the backlog is still ahead (the service time measured above).
            window = 0.8 * len(routine) * per_study / workers
            arrived: dict[str, float] = {}
            finished: dict[str, str] = {}
            queue: StudyQueue[Path] = StudyQueue()

            def run_one(folder: Path) -> None:
                finished[folder.name] = runtime.run_folder(folder).status

            dispatcher = Dispatcher(queue, run_one, workers, name="bench")
            t0 = time.time()
            for folder in routine:
                arrived[folder.name] = time.time()
                queue.put(folder, "routine")
            rng = random.Random(seed)
            for at, folder in sorted(zip((rng.uniform(0, window) for _ in stat), stat)):
                time.sleep(max(0.0, t0 + at - time.time()))
                arrived[folder.name] = time.time()
                queue.put(folder, "stat")
            dispatcher.close()
            wall = time.time() - t0
        received = list(peer.received)
        invalid = [r for r in received if not r.valid]
    notified: dict[str, float] = {}
    for r in received:
        study_id = study_of_oru(r.er7)
        notified[study_id] = min(notified.get(study_id, r.at), r.at)
    figures: dict = {"workers": workers, "wall_s": round(wall, 1), "window_s": round(window, 1), "per_study_s": round(per_study, 3)}
    results_dir = settings.data_dir / settings.results_bucket / "results"
    for level, folders in (("stat", stat), ("routine", routine)):
        to_result, to_notice = [], []
        for folder in folders:
            record = results_dir / folder.name / "result.json"
            if finished.get(folder.name) != "succeeded" or not record.exists():
                continue
            completed = datetime.fromisoformat(json.loads(record.read_text())["completed_at"]).timestamp()
            to_result.append(completed - arrived[folder.name])
            if folder.name in notified:
                to_notice.append(notified[folder.name] - arrived[folder.name])
        figures[level] = {
            "studies": len(folders),
            "succeeded": len(to_result),
            "notified": len(to_notice),
            "arrival_to_result_s": {"p50": pct(to_result, 0.5), "p95": pct(to_result, 0.95), "max": max(to_result, default=float("nan"))},
            "arrival_to_notification_s": {
                "p50": pct(to_notice, 0.5),
                "p95": pct(to_notice, 0.95),
                "max": max(to_notice, default=float("nan")),
            },
        }
    figures["oru_received"] = len(received)
    figures["oru_invalid"] = len(invalid)
    figures["oru_distinct_control_ids"] = len({r.control_id for r in received})
    return figures


def show(f: dict) -> None:
    print(
        f"\n{f['workers']} worker(s): {f['stat']['studies']} stat dripped over {f['window_s']} s into {f['routine']['studies']} routine; wall {f['wall_s']} s"
    )
    print(f"{'priority':<9}{'studies':>8}{'notified':>9}   arrival→result p50 / p95 / max (s)   arrival→notification p50 / p95 / max (s)")
    for level in ("stat", "routine"):
        r, n = f[level]["arrival_to_result_s"], f[level]["arrival_to_notification_s"]
        print(
            f"{level:<9}{f[level]['succeeded']:>8}{f[level]['notified']:>9}   "
            f"{r['p50']:>8.2f} / {r['p95']:>8.2f} / {r['max']:>8.2f}          {n['p50']:>8.2f} / {n['p95']:>8.2f} / {n['max']:>8.2f}"
        )
    print(
        f"ORUs at the RIS: {f['oru_received']} received, {f['oru_distinct_control_ids']} distinct MSH-10, {f['oru_invalid']} failing strict validation"
    )
    print(
        f"routine worst wait {f['routine']['arrival_to_result_s']['max']:.1f} s: the whole backlog drained FIFO plus the stat studies "
        f"that overtook it (each stat study arriving within {HEAD_START_S['stat']:.0f} s of a routine one may; none later)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routine", type=int, default=2000)
    parser.add_argument("--stat", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="phantom size in pixels (default 512)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        root = Path(tmp)
        routine, stat = write_studies(root / "studies", args.routine, args.stat, args.size)
        warm_rng = np.random.default_rng(1)
        warm_image = generate_phantom(warm_rng, size=args.size, findings=["Edema"]).image
        name, data = encode(warm_image, 0)
        warmup = [write_study(root / "warm" / f"warm-{i}", sidecar(f"warm-{i}", name, warm_rng, data), name, data) for i in range(6)]
        print(f"triage benchmark: {args.routine} routine + {args.stat} stat studies ({args.size}²), workers {args.workers}", flush=True)
        for workers in args.workers:
            figures = run(routine, stat, warmup, workers, root, args.seed)
            show(figures)
            if args.json:
                print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
