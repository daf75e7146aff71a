"""Crash consistency: simulate operating-system crashes (power cuts) under `radstream run`, `resume`, `lake compact` and
the gateway, and prove that none costs a study, counts one twice, or ends in a traceback.

    .venv/bin/python benchmarks/crash_bench.py --crashes 200     # the long version (docs/reliability.md has its table)
    .venv/bin/python benchmarks/crash_bench.py --crashes 20      # the short one (tests/e2e/test_crash_consistency.py)

Each crash: a command starts as a subprocess with RADSTREAM_SYNC_LOG set (shared/atomicfile.py: every durable write
names the inode, size and mtime it put on disk), is SIGKILLed at a random moment, and then the machine "loses power":
every file under the data dir changed since that command started that no fsync covers is cut short, zero-filled or
emptied at random (of a file appended to, only what lies past its last fsynced size); what was fsynced survives, as
on a real disk. Then the next command runs on what is left. The commands rotate: `run` of a batch of study folders
(new or already run), `resume`, `lake compact`, and the gateway receiving instances by storescu. At the end, `resume`
until nothing is left and a compaction, then the audit:

- lost: a study some durable journal planned (or the gateway acknowledged to storescu) without its record (a result
  for a valid study, a failure record for a broken `bad-*` one);
- counted twice: a study with both a result and a failure record, or with more than one row in the named query
  study_end_to_end (each study's latest execution, from the telemetry lake);
- telemetry missing: a study with a record and no row in study_end_to_end;
- tracebacks: any command's stderr holding "Traceback" (killed ones included: they die silently);
- bad exits: a command that ended by itself with an exit code outside the README's 0/1/2/3.

Exit 1 when any of them is not zero.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTIONS = ("run", "resume", "compact", "gateway")
MUST_BE_ZERO = ("studies lost", "counted twice", "telemetry missing", "tracebacks", "bad exits")


@dataclass
class Tally:
    crashes: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    killed: int = 0  # SIGKILLed while running (the rest ended before the power cut)
    damaged_files: int = 0
    damaged_tails: int = 0
    tracebacks: int = 0
    bad_exits: int = 0
    acknowledged: set[str] = field(default_factory=set)  # gateway instances storescu saw stored (their study ids, after)
    sent_uids: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> file
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


PRODUCT = ROOT  # the checkout whose `radstream` the commands run (--product: an older one, to compare)


def environment(sync_log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADSTREAM_", "TRITON_", "GATEWAY_", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(PRODUCT)
    env["RADSTREAM_SYNC_LOG"] = str(sync_log)
    return env


def synced(sync_log: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, size, mtime_ns) of its latest durable write."""
    known: dict[str, tuple[int, int, int]] = {}
    if sync_log.exists():
        for line in sync_log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                known[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return known


def power_cut(data: Path, since_ns: int, sync_log: Path, rng: random.Random, tally: Tally) -> None:
    """What an OS crash leaves: every file changed since `since_ns` beyond what an fsync covers, cut, zeroed or emptied."""
    known = synced(sync_log)
    for path in sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
        st = path.stat()
        if st.st_mtime_ns < since_ns:
            continue
        record = known.get(str(path))
        if record and record == (st.st_ino, st.st_size, st.st_mtime_ns):
            continue  # exactly what was fsynced
        if record and record[0] == st.st_ino and st.st_size > record[1]:
            keep = record[1]  # appended past its last fsync: only the tail is at risk
            tally.damaged_tails += 1
        else:
            keep = 0
            tally.damaged_files += 1
        size = st.st_size - keep
        how = rng.choice(("cut", "zero", "empty"))
        with open(path, "r+b") as f:
            if how == "cut":
                f.truncate(keep + rng.randrange(0, max(1, size)))
            elif how == "zero":
                f.seek(keep)
                f.write(b"\0" * size)
            else:
                f.truncate(keep)


def cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", *args],
        cwd=PRODUCT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen, tally: Tally, what: str, kill_at: float | None) -> tuple[str, str]:
    """Kill the process at `kill_at` (monotonic) unless it ended before; collect its output; count tracebacks."""
    if kill_at is not None:
        while process.poll() is None and time.monotonic() < kill_at:
            time.sleep(0.01)
        if process.poll() is None:
            process.kill()
            tally.killed += 1
    out, err = process.communicate(timeout=600)
    if "Traceback" in err or "Traceback" in out:
        tally.tracebacks += 1
        tally.notes.append(f"{what}: traceback: {err[-1500:]}")
    if process.returncode >= 0 and process.returncode not in (0, 1, 2, 3):
        tally.bad_exits += 1
        tally.notes.append(f"{what}: exit {process.returncode}: {err[-500:]}")
    return out, err


def gateway_round(data: Path, env: dict[str, str], instances: Path, rng: random.Random, tally: Tally, kill_after: float) -> None:
    """Start the gateway, send a few instances with storescu, SIGKILL it at a random moment."""
    storescu = shutil.which("storescu")
    if not storescu:
        raise SystemExit("crash_bench: storescu (dcmtk) is not installed: `make dcmtk`")
    process = cli(["gateway", "--data-dir", str(data), "--workers", "1"], env)
    started = time.monotonic()
    ae = port = None
    lines = []
    while time.monotonic() - started < 120:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.match(r"^AE title: (\S+)", line):
            ae = m.group(1)
        if m := re.match(r"^DIMSE: +127\.0\.0\.1 port (\d+)", line):
            port = m.group(1)
            break
    if ae is None or port is None:
        finish(process, tally, "gateway", time.monotonic())
        tally.notes.append(f"gateway did not start: {''.join(lines)[-500:]}")
        tally.bad_exits += 1
        return
    kill_at = time.monotonic() + kill_after
    files = sorted(instances.glob("*.dcm"))
    for path in rng.sample(files, k=min(len(files), rng.randint(1, 3))):
        if time.monotonic() >= kill_at:
            break
        sent = subprocess.run(
            [storescu, "-aec", ae, "127.0.0.1", port, str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=max(1.0, kill_at - time.monotonic() + 30),
        )
        if sent.returncode == 0 and "Error" not in sent.stderr:
            tally.acknowledged.add(path.stem)  # the StudyInstanceUID's file: the study id is looked up at the audit
    finish(process, tally, "gateway", kill_at)


def write_instances(folder: Path, count: int) -> None:
    import numpy as np

    from synthetic.phantoms import generate_phantom
    from synthetic.samples import dicom_bytes

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        image = generate_phantom(rng, size=64).image
        (folder / f"gw-{i:03d}.dcm").write_bytes(dicom_bytes(np.round((1.0 - image) * 4095), "MONOCHROME1", patient_name=f"CRASH^{i}"))


def audit(data: Path, instances: Path, tally: Tally) -> dict[str, int]:
    import json

    import pydicom

    from radstream.analytics import DuckDBQueryRunner
    from radstream.journal import read_journal
    from services.gateway.domain import pseudonym_key, study_id_for

    promised: set[str] = set()
    for journal in sorted((data / "journal").glob("*.jsonl")):
        for _, line in read_journal(journal)[0]:
            if isinstance(line.get("planned"), str):
                promised.add(line["planned"])
            elif isinstance(line.get("studies"), list):  # the journal format before issue 22 (--product of an older checkout)
                promised.update(item["study_id"] for item in line["studies"] if isinstance(item, dict) and "study_id" in item)
    # An upload (its sidecar or DICOM file: what starts a run) is a promise too: resume runs every upload without a record.
    for upload in (data / "images" / "incoming").glob("*/*"):
        if upload.suffix in (".json", ".dcm"):
            promised.add(upload.parent.name)
    key_file = data / "gateway" / "pseudonym.key"
    key_text = key_file.read_text(errors="replace").strip() if key_file.exists() else ""
    key = pseudonym_key(key_text) if re.fullmatch(r"[0-9a-f]{64}", key_text) else None
    unfindable = 0
    for stem in sorted(tally.acknowledged):
        header = pydicom.dcmread(instances / f"{stem}.dcm", stop_before_pixels=True)
        if key is not None:
            promised.add(study_id_for(key, header.StudyInstanceUID, header.SOPInstanceUID)[0])
        else:  # the key that names its study is gone: the acknowledged instance cannot be found again
            unfindable += 1
    if unfindable:
        tally.notes.append(f"the gateway's pseudonym key is damaged: {unfindable} acknowledged instance(s) cannot be found")
    results_root = data / "results"

    def record(study_id: str) -> tuple[bool, bool]:
        def whole(path: Path) -> bool:
            try:
                return json.loads(path.read_text())["study_id"] == study_id
            except (OSError, ValueError, KeyError, TypeError):
                return False

        return whole(results_root / "results" / study_id / "result.json"), whole(results_root / "failed" / study_id / "error.json")

    lost, twice = unfindable, 0
    recorded: set[str] = set()
    for study_id in sorted(promised):
        result, failure = record(study_id)
        broken = study_id.startswith("bad-")
        if result and failure:
            twice += 1
            tally.notes.append(f"{study_id}: both a result and a failure record")
        if (broken and not failure) or (not broken and not result):
            lost += 1
            tally.notes.append(f"{study_id}: lost (result {result}, failure record {failure})")
        if result or failure:
            recorded.add(study_id)
    runner = DuckDBQueryRunner(data / "telemetry")
    try:
        rows = runner.run("study_end_to_end", days=30).as_dicts()
    finally:
        runner.close()
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["study_id"])] = counts.get(str(row["study_id"]), 0) + 1
    twice += sum(1 for s in recorded if counts.get(s, 0) > 1)
    missing = sorted(s for s in recorded if counts.get(s, 0) == 0)
    tally.notes += [f"{s}: no telemetry row" for s in missing[:10]]
    return {
        "promised studies": len(promised),
        "recorded": len(recorded),
        "studies lost": lost,
        "counted twice": twice,
        "telemetry missing": len(missing),
        "tracebacks": tally.tracebacks,
        "bad exits": tally.bad_exits,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=200, help="simulated OS crashes (default 200)")
    parser.add_argument("--batches", type=int, default=6, help="batches of study folders `run` picks from (default 6)")
    parser.add_argument("--per-batch", type=int, default=4, help="valid studies per batch; each batch also holds one broken study")
    parser.add_argument("--actions", default=",".join(ACTIONS), help=f"which commands to crash (default {','.join(ACTIONS)})")
    parser.add_argument("--max-delay", type=float, default=6.0, help="the latest a kill comes after a command starts, s (default 6)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--work-dir", help="keep the data here (default: a temp folder, removed after)")
    parser.add_argument("--product", help="run the commands from this checkout instead (e.g. `git archive` of an older commit)")
    args = parser.parse_args(argv)
    global PRODUCT
    PRODUCT = Path(args.product).resolve() if args.product else ROOT
    actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    if args.crashes < 1 or not set(actions) <= set(ACTIONS):
        parser.error(f"--crashes >= 1 and --actions from {', '.join(ACTIONS)}")
    from synthetic.samples import write_demo_studies

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="radstream-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    data, sync_log, instances = work / "data", work / "sync.log", work / "instances"
    batches = []
    for b in range(args.batches):
        folder = work / "studies" / f"batch-{b:02d}"
        write_demo_studies(folder, args.per_batch, size=64, invalid=False)
        for path in sorted(folder.iterdir()):  # ids unique across batches
            path.rename(folder / f"b{b:02d}-{path.name}")
        for sidecar in folder.glob("*/*.json"):
            doc = __import__("json").loads(sidecar.read_text())
            doc["study_id"] = sidecar.parent.name
            sidecar.write_text(__import__("json").dumps(doc))
        broken = folder / f"bad-b{b:02d}"
        broken.mkdir()
        (broken / "sidecar.json").write_text(f'{{"study_id": "bad-b{b:02d}", "schema_version": "1"}}')
        (broken / "image.png").write_bytes(b"not a png")
        batches.append(folder)
    if "gateway" in actions:
        write_instances(instances, 12)
    env = environment(sync_log)
    rng = random.Random(args.seed)
    tally = Tally()
    started = time.monotonic()
    for i in range(args.crashes):
        action = actions[i % len(actions)]
        tally.by_action[action] = tally.by_action.get(action, 0) + 1
        since = time.time_ns()
        delay = rng.uniform(0.2, args.max_delay)
        if action == "gateway":
            gateway_round(data, env, instances, rng, tally, delay)
        else:
            command = {
                "run": ["run", str(rng.choice(batches)), "--data-dir", str(data), "--quiet", "--workers", str(rng.choice((1, 2)))],
                "resume": ["resume", "--data-dir", str(data), "--quiet"],
                "compact": ["lake", "compact", "--data-dir", str(data), "--quiet", "--target-mb", str(rng.choice((0.001, 0.01, 64)))],
            }[action]
            if action == "compact" and not (data / "telemetry").is_dir():
                command = (
                    ["resume", "--data-dir", str(data), "--quiet"]
                    if data.is_dir()
                    else ["run", str(batches[0]), "--data-dir", str(data), "--quiet"]
                )
            finish(cli(command, env), tally, action, time.monotonic() + delay)
        if data.exists():
            power_cut(data, since, sync_log, rng, tally)
        tally.crashes += 1
        print(f"crash {i + 1}/{args.crashes}: {action}, kill after {delay:.2f} s", file=sys.stderr, flush=True)
    # Settle: resume until nothing is left, then a compaction; nothing is killed now.
    for _ in range(4):
        out, _ = finish(cli(["resume", "--data-dir", str(data), "--quiet", "--json"], env), tally, "final resume", None)
        try:
            if __import__("json").loads(out)["totals"]["studies"] == 0:
                break
        except (ValueError, KeyError):
            tally.notes.append(f"final resume printed no JSON: {out[-300:]}")
            break
    finish(cli(["lake", "compact", "--data-dir", str(data), "--quiet"], env), tally, "final compact", None)
    figures = audit(data, instances, tally)
    tally.seconds = time.monotonic() - started
    print(f"{'crashes':<28}{tally.crashes:>8}")
    for action in actions:
        print(f"  {action:<26}{tally.by_action.get(action, 0):>8}")
    print(f"{'killed mid-command':<28}{tally.killed:>8}")
    print(f"{'files damaged (whole)':<28}{tally.damaged_files:>8}")
    print(f"{'files damaged (tail)':<28}{tally.damaged_tails:>8}")
    print(f"{'gateway instances acked':<28}{len(tally.acknowledged):>8}")
    for name, value in figures.items():
        print(f"{name:<28}{value:>8}")
    print(f"{'wall seconds':<28}{tally.seconds:>8.0f}")
    for note in tally.notes[:20]:
        print(f"note: {note}")
    failed = [name for name in MUST_BE_ZERO if figures[name]]
    print("crash_bench: " + ("OK" if not failed else f"FAILED ({', '.join(failed)})"))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
