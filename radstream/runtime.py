"""The journalled batch runner: study folders or uploads planned, journalled, run on workers, resumed after a crash.

`LocalRuntime` is radstream/local_aws.py's stand-in for AWS (one study: upload, rule, workflow, outcome) with the
batch around it: `plan` and `run_many` for study folders, `plan_resume` and `resume` for what the journals and the
images bucket say is unfinished, `acknowledgements` for the gateway. Which study starts next is `_map`'s choice from
the planned list: stat before urgent before routine, with aging (shared/scheduling.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from radstream.journal import Journal, JournalEntry, recover
from radstream.local_aws import LocalAws, StudyOutcome, find_studies, folder_study_id, s3_event
from radstream.template import DEFAULT_TEMPLATE
from shared.contracts import FailureRecord, StudyResult
from shared import priority
from shared.errors import (
    ConfigurationError,
    ObjectNotFound,
    RadStreamError,
    StorageUnavailable,
    StudyConflict,
    is_transient,
)
from shared.messages import INCOMING, study_id_from_key
from shared.observability import logger, logs_to
from shared.scheduling import StudyQueue
from shared.settings import Settings


@dataclass
class ResumePlan:
    entries: list[JournalEntry]
    warnings: list[str] = field(default_factory=list)
    recovered: dict[str, int] = field(default_factory=dict)


class Acknowledgements:
    """The gateway's side of the journal: an instance is journalled (fsynced) when it is stored, before the gateway
    answers Success, and its outcome when its run ends. A gateway killed in between (even after StoreResults, before
    SendTelemetry) leaves the instance unfinished in the journal, so the next start (or `radstream resume`) runs it
    again under the same rules as `run`'s studies, result or no result."""

    def __init__(self, journal: Journal, images_bucket: str) -> None:
        self.journal = journal
        self.images_bucket = images_bucket

    def acknowledged(self, key: str) -> None:
        self.journal.planned(JournalEntry(study_id_from_key(key), f"s3://{self.images_bucket}/{key}"))

    def ended(self, outcome: StudyOutcome) -> None:
        try:
            self.journal.ended(outcome.study_id, outcome.source, outcome.status, outcome.error_type, recorded=outcome.output is not None)
        except OSError:
            pass  # without its line, the next start runs it once more (a run is idempotent)

    def close(self) -> None:
        self.journal.close()


@dataclass
class RunReport:
    """What a run or a resume did: an outcome per study that ran, and the studies it did not reach."""

    outcomes: list[StudyOutcome]
    not_run: list[str] = field(default_factory=list)
    interrupted: bool = False
    journal: Path | None = None
    # What resume could not take on trust, in words (a torn journal line, a record moved aside), and what it found
    # by looking itself; the CLI prints them to stderr.
    warnings: list[str] = field(default_factory=list)
    recovered: dict[str, int] = field(default_factory=dict)


class LocalRuntime(LocalAws):
    """The local AWS stand-in with the journalled batch runner around it; a context manager that closes what it opened."""

    def __init__(
        self,
        settings: Settings,
        template_path: Path = DEFAULT_TEMPLATE,
        workers: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        branch_threads: int = 0,
    ) -> None:
        """`workers`: studies run side by side; `branch_threads`: see LocalAws."""
        super().__init__(settings, template_path, sleep, branch_threads)
        self.workers = max(1, workers)

    def plan(self, folders: Iterable[Path]) -> list[tuple[Path, str | None, Exception | None]]:
        """Each folder with the study id it uploads under; a folder whose id another folder of the batch also claims is refused."""
        planned: list[tuple[Path, str | None, Exception | None]] = []
        for folder in folders:
            try:
                planned.append((folder, self.study_id(folder), None))
            except Exception as e:
                planned.append((folder, None, e))
        claims = Counter(study_id for _, study_id, _ in planned if study_id)
        owners: dict[str, list[str]] = {}
        for folder, study_id, _ in planned:
            if study_id and claims[study_id] > 1:
                owners.setdefault(study_id, []).append(str(folder))
        return [
            (
                folder,
                study_id,
                StudyConflict(
                    f"{claims[study_id]} folders of this batch claim study_id {study_id} ({', '.join(owners[study_id])}); "
                    "a study id names one input: give each study its own",
                    study_id=study_id,
                ),
            )
            if study_id in owners and error is None
            else (folder, study_id, error)
            for folder, study_id, error in planned
        ]

    def run_many(
        self, folders: Iterable[Path], on_done: Callable[[StudyOutcome], None] | None = None, root: Path | None = None
    ) -> RunReport:
        """Run study folders, journalled: what was asked is written before anything runs (see radstream/journal.py).

        `root`: the PATH the folders were found under; every line of the journal names it, so a resume whose journal
        lost lines can look there for the studies it no longer names.
        """
        planned = [(str(folder), study_id, error) for folder, study_id, error in self.plan(folders)]
        root_text = str(Path(root).resolve()) if root is not None else None
        entries = [JournalEntry(study_id or folder_study_id(Path(source)), source, root_text) for source, study_id, _ in planned]
        return self._journalled("run", entries, planned, on_done)

    def resume(self, on_done: Callable[[StudyOutcome], None] | None = None, plan: ResumePlan | None = None) -> RunReport:
        """Run every study a journal names without a terminal outcome, every one whose record does not check, and every
        upload with neither result nor failure record. What the journals cannot say (lines lost to a crash or a failing
        disk) is looked for in the study folders they name and in the uploads; the report says what was found there.

        `plan`: one `plan_resume` made earlier (the gateway plans before it listens, then runs the plan beside new work)."""
        plan = plan or self.plan_resume()
        planned: list[tuple[str, str | None, Exception | None]] = [(e.source, e.study_id, None) for e in plan.entries]
        report = self._journalled("resume", plan.entries, planned, on_done)
        report.warnings = plan.warnings + report.warnings
        report.recovered = plan.recovered
        return report

    def plan_resume(self) -> ResumePlan:
        """What `resume` would run now, and what it had to say about the journals and records it could not trust."""
        recovery = recover(self.journal_dir)
        warnings = list(recovery.warnings)
        states: dict[str, str | None] = {}

        def state(study_id: str) -> str | None:
            if study_id not in states:
                try:
                    states[study_id] = self.record_state(study_id, warnings)
                except StorageUnavailable:  # unreadable now: run it again (a run is idempotent) rather than stop the resume
                    states[study_id] = None
            return states[study_id]

        entries = list(recovery.unfinished)
        entries += [e for e in recovery.finished.values() if state(e.study_id) not in ("result", "permanent")]
        named = {e.study_id for e in entries} | set(recovery.finished)
        from_folders = 0
        for root in sorted(recovery.roots):
            try:
                folders = find_studies(Path(root))
            except (ConfigurationError, OSError):
                warnings.append(f"{root}: named by a damaged journal, but it holds no study folder now")
                continue
            for folder in folders:
                try:
                    study_id = self.study_id(folder)
                except Exception:
                    study_id = folder_study_id(folder)
                if study_id not in named and state(study_id) not in ("result", "permanent"):
                    entries.append(JournalEntry(study_id, str(folder), root))
                    from_folders += 1
                named.add(study_id)
        from_uploads = [
            JournalEntry(study_id_from_key(key), f"s3://{self.settings.images_bucket}/{key}")
            for key in self.pending(state)
            if study_id_from_key(key) not in named
        ]
        entries += from_uploads
        if recovery.roots or recovery.blind:
            warnings.append(
                f"recovered {from_folders} unfinished stud{'y' if from_folders == 1 else 'ies'} from the study folders "
                f"under {', '.join(sorted(recovery.roots)) or '(none named)'} and {len(from_uploads)} from the uploads"
            )
        return ResumePlan(entries, warnings, {"from_folders": from_folders, "from_uploads": len(from_uploads)})

    def acknowledgements(self) -> Acknowledgements:
        """A journal of the instances a gateway acknowledges, for this runtime's data dir (see Acknowledgements)."""
        return Acknowledgements(Journal(self.journal_dir, "gateway", []), self.settings.images_bucket)

    def record_state(self, study_id: str, warnings: list[str] | None = None) -> str | None:
        """ "result", "permanent" or "transient" (its failure record), or None (no record): only a record that parses
        and matches its schema counts. One that does not is moved aside (`quarantine/<study_id>/…`, kept, never deleted)
        and named in `warnings`; the study then has no record, so resume runs it again."""
        bucket = self.settings.results_bucket
        for key, model in ((f"results/{study_id}/result.json", StudyResult), (f"failed/{study_id}/error.json", FailureRecord)):
            try:
                data = self.store.get_bytes(bucket, key)
            except ObjectNotFound:
                continue
            try:
                record = model.model_validate_json(data)
                if record.study_id != study_id:
                    raise ValueError("study_id")
            except ValueError:
                moved = self.quarantine(bucket, key, data)
                if warnings is not None:
                    warnings.append(
                        f"{self._location(bucket, key)} does not parse or match its schema: moved to {moved}; the study is run again"
                    )
                continue
            if isinstance(record, StudyResult):
                return "result"
            return "transient" if is_transient(record.error_type) else "permanent"
        return None

    def quarantine(self, bucket: str, key: str, data: bytes) -> str:
        """Move a damaged record aside, under quarantine/<study_id>/<UTC time>-<name>, in the same bucket."""
        study_id, name = key.split("/")[1], key.rsplit("/", 1)[-1]
        target = f"quarantine/{study_id}/{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{name}"
        self.store.put_bytes(bucket, target, data)
        self.store.delete(bucket, key)
        return self._location(bucket, target)

    @property
    def journal_dir(self) -> Path:
        return self.settings.data_dir / "journal"

    def _journalled(
        self,
        command: str,
        entries: list[JournalEntry],
        planned: list[tuple[str, str | None, Exception | None]],
        on_done: Callable[[StudyOutcome], None] | None,
    ) -> RunReport:
        journal = Journal(self.journal_dir, command, entries, roots=[e.root for e in entries if e.root])
        roots = {e.source: e.root for e in entries}
        lost_lines: list[str] = []

        def run_one(item: tuple[str, str | None, Exception | None]) -> StudyOutcome:
            source, study_id, error = item
            named = study_id or folder_study_id(Path(source))
            uploaded = source.removeprefix(f"s3://{self.settings.images_bucket}/") if source.startswith("s3://") else None
            try:
                if error is not None:
                    outcome = self.refused(source, named, "upload", error)
                elif uploaded is not None:
                    outcome = self.run_key(uploaded)
                elif Path(source).is_dir():
                    outcome = self.run_folder(Path(source), study_id)
                elif study_id and (key := self._uploaded_key(study_id)):
                    outcome = self.run_key(key)
                else:
                    outcome = self.refused(
                        source, named, "upload", ConfigurationError(f"{source} is gone and nothing was uploaded for it", study_id=study_id)
                    )
            except Exception as e:
                outcome = self.refused(source, named, "runtime", e)
            try:
                journal.ended(
                    outcome.study_id,
                    outcome.source,
                    outcome.status,
                    outcome.error_type,
                    recorded=outcome.output is not None,
                    root=roots.get(source),
                )
            except OSError as e:  # the study is done; without its line, resume runs it once more (idempotent)
                lost_lines.append(outcome.study_id)
                with logs_to(self._log_file):
                    logger.warning("journal line not written", study_id=outcome.study_id, error_type=type(e).__name__)
            return outcome

        try:
            report, not_run = self._map(run_one, planned, on_done, [self.priority_of(source) for source, _, _ in planned])
        finally:
            journal.close()
        report.journal = journal.path
        report.not_run = [entries[i].study_id for i in not_run]
        if lost_lines:
            report.warnings.append(
                f"{len(lost_lines)} journal line(s) not written (the disk refused them): `radstream resume` runs those studies once more"
            )
        return report

    def priority_of(self, source: str) -> str:
        """A study's priority before it runs (shared.priority): from its folder, or from its upload."""
        prefix = f"s3://{self.settings.images_bucket}/"
        if not source.startswith(prefix):
            return priority.of_folder(Path(source)) if Path(source).is_dir() else priority.DEFAULT
        key = source.removeprefix(prefix)
        try:
            if not key.endswith(".dcm"):
                return priority.of_sidecar_bytes(self.store.get_bytes(self.settings.images_bucket, key))
            sender = priority.of_sender(self.store, self.settings.images_bucket, key)
            path = self.local_path(self.settings.images_bucket, key)
            if path is not None:  # the header up to the priority tag, from the file: never the pixel data
                with open(path, "rb") as f:
                    header = priority.of_dicom_file(f)
            else:
                header = priority.of_dicom_bytes(self.store.get_bytes(self.settings.images_bucket, key))
        except (RadStreamError, OSError):
            return priority.DEFAULT  # its run names what is wrong
        # As the gateway queued it: the order's or its sender's, the more urgent.
        return priority.most_urgent(header, sender or priority.DEFAULT)

    def _uploaded_key(self, study_id: str) -> str | None:
        keys = [k for k in self.store.list_keys(self.settings.images_bucket, f"{INCOMING}{study_id}/") if k.endswith((".json", ".dcm"))]
        return keys[0] if len(keys) == 1 else None

    def pending(self, state: Callable[[str], str | None] | None = None) -> list[str]:
        """Uploads that start a run (by the template's rule) whose study has no result and no failure record, or only a
        transient one, or one that does not check (`record_state`, or the `state` the caller keeps).

        What a crash between upload and result, or an outage, leaves behind; `resume` runs them again.
        """
        bucket = self.settings.images_bucket
        keys = []
        for key in self.store.list_keys(bucket, INCOMING):
            head = self.store.head(bucket, key)
            if head is None or not self.route(s3_event(bucket, key, head.size)):
                continue
            study_id = study_id_from_key(key)
            try:
                known = (state or self.record_state)(study_id)
            except StorageUnavailable:
                known = None  # unreadable now: run it again (a run is idempotent) rather than stop the whole resume
            if known not in ("result", "permanent"):
                keys.append(key)
        return keys

    def _map(
        self,
        run: Callable[[Any], StudyOutcome],
        items: list[Any],
        on_done: Callable[[StudyOutcome], None] | None,
        priorities: list[str] | None = None,
    ) -> tuple[RunReport, list[int]]:
        """Run items on the workers, starting each only when a worker is free, stat before urgent before routine
        (shared/scheduling.py); the report, and the indexes of the items not reached (the caller names them).

        Ctrl-C (or SIGTERM, which the CLI turns into the same) stops starting new studies; those in flight
        finish and are journalled; the rest are reported as not run, for `radstream resume`.
        """
        done: dict[int, StudyOutcome] = {}
        interrupted = False
        queue: StudyQueue[int] = StudyQueue()
        for index in range(len(items)):
            queue.put(index, priorities[index] if priorities else priority.DEFAULT)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="study") as pool:
            running: dict[Future[StudyOutcome], int] = {}

            def start_next() -> None:
                index = queue.pop()
                if index is not None:
                    running[pool.submit(run, items[index])] = index

            try:
                for _ in range(self.workers):
                    start_next()
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = running.pop(future)
                        done[index] = future.result()
                        if on_done:
                            on_done(done[index])
                        start_next()
            except KeyboardInterrupt:
                interrupted = True
                for future in list(running):
                    done[running.pop(future)] = future.result()
        report = RunReport(outcomes=[done[i] for i in sorted(done)], interrupted=interrupted)
        return report, [i for i in range(len(items)) if i not in done]
