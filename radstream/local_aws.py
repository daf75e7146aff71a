"""The local stand-in for AWS: folders for buckets, template.yaml's rule and state machine, the Lambda handlers in-process.

An upload writes the study's files into the images bucket (image first, sidecar last) and produces
the S3 "Object Created" events that S3 would send to EventBridge. Each event goes through the
template's rule pattern and input transformer; each match starts an execution of the template's
state machine, whose tasks call the very Lambda handlers the container images run.

`LocalAws` runs one study at a time, as AWS would for one upload; the journalled batch runner (plans, workers,
resume, the gateway's acknowledgements) is radstream/runtime.py's `LocalRuntime`, built on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Self

from pydantic_core import to_json

from radstream.asl import ExecutionResult, Retrier, StateMachine, StatesError, TaskContext, parse_retriers
from radstream.eventpattern import apply_input_transformer, matches
from radstream.template import DEFAULT_TEMPLATE, Template
from radstream.traces import write_trace
from shared import wiring
from shared.atomicfile import staging_dir, sweep_staging
from shared.contracts import FailureRecord, FailureStage, ObjectRef
from shared.errors import (
    ConfigurationError,
    FailureNotRecorded,
    ObjectNotFound,
    RadStreamError,
    StorageUnavailable,
    StudyConflict,
)
from shared.messages import INCOMING, study_id_from_key
from shared.metrics import LocalEmfFile
from shared.observability import StageHandler, code_location, flush_logs, logger, logs_to
from shared.settings import Settings
from shared.sidecar import parse_sidecar_bytes
from shared.storage import LocalObjectStore, ObjectStore, StoredObject, durable_together


MAX_PAYLOAD_BYTES = 256 * 1024
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class LambdaContext:
    """What the Lambda runtime hands a handler; Powertools reads these attributes."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    deadline: float = field(default_factory=lambda: time.monotonic() + 60)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass
class StudyOutcome:
    """How one study ended, for the CLI's table and --json."""

    study_id: str
    source: str
    status: str  # succeeded | failed
    execution_name: str | None = None
    end_to_end_ms: float | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    detections: int = 0
    stage: str | None = None
    error_type: str | None = None
    message: str | None = None
    output: str | None = None  # where its result or failure record is; None: nothing could be recorded (resume runs it)
    # DICOM studies: what DeliverResults did (destinations reached, or the dead letter, or why nothing was sent)
    delivery: dict[str, Any] | None = None
    # The critical-finding rules that fired for the result (result.json's critical_findings); None: not evaluated.
    critical_findings: list[str] | None = None


def s3_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """The event S3 sends to EventBridge for a PUT (EventBridge notifications enabled on the bucket)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "000000000000",
        "time": now,
        "region": "local",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "sequencer": uuid.uuid4().hex[:16]},
            "request-id": uuid.uuid4().hex[:16],
            "requester": "local",
            "reason": "PutObject",
        },
    }


def find_studies(path: Path) -> list[Path]:
    """A study folder holds a sidecar (*.json) and its image, or one DICOM file (*.dcm); PATH is one or a folder of them."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"{path} is not a folder")
    if is_study(path):
        return [path]
    studies = sorted(p for p in path.iterdir() if p.is_dir() and is_study(p))
    if not studies:
        raise ConfigurationError(
            f"{path} holds no study: expected a folder with a sidecar (*.json) or a DICOM file (*.dcm), or folders of them"
        )
    return studies


def is_study(folder: Path) -> bool:
    return any(folder.glob("*.json")) or any(folder.glob("*.dcm"))


def upload_key_study_id(folder: Path, sidecar: Path) -> str:
    """The id that names the study's upload prefix: the sidecar's study_id when it is safe, else the folder's name.

    Whatever is wrong with the sidecar (unreadable, not JSON, nested past the parser's depth), validate names it;
    here it only decides where the upload goes.
    """
    try:
        claimed = parse_sidecar_bytes(sidecar.read_bytes()).get("study_id")
    except Exception:
        claimed = None
    if isinstance(claimed, str) and claimed and not _SAFE_ID.search(claimed) and claimed not in (".", ".."):
        return claimed
    return folder_study_id(folder)


def folder_study_id(folder: Path) -> str:
    return _SAFE_ID.sub("_", folder.name) or "study"


def study_files(folder: Path) -> list[Path]:
    """The files of a study folder in upload order (the sidecar, which starts the run, last)."""
    sidecars, dicoms = sorted(folder.glob("*.json")), sorted(folder.glob("*.dcm"))
    # Each .json or .dcm landing under incoming/ starts a run (template.yaml's rule), so a study has exactly one.
    if len(sidecars) + len(dicoms) != 1:
        raise ConfigurationError(
            f"{folder}: a study folder holds one sidecar (*.json) with its PNG/JPEG image, or one DICOM file (*.dcm) alone; "
            f"found {len(sidecars)} sidecar(s) and {len(dicoms)} DICOM file(s)"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".json") + sidecars


def task_resources(definition: dict[str, Any]) -> list[str]:
    """Every Task state's Resource in a state machine definition, Parallel branches and Map iterators included, in order."""
    found: list[str] = []
    for state in definition.get("States", {}).values():
        if state.get("Type") == "Task" and isinstance(state.get("Resource"), str) and state["Resource"] not in found:
            found.append(state["Resource"])
        nested = [*state.get("Branches", []), *(state[k] for k in ("Iterator", "ItemProcessor") if k in state)]
        found += [r for sub in nested for r in task_resources(sub) if r not in found]
    return found


def _errno_name(error: BaseException) -> str:
    """ENOSPC, EROFS…: the errno behind an error (or its cause), never its message (a path could name a patient's study)."""
    import errno

    for e in (error, error.__cause__):
        if isinstance(e, OSError) and e.errno:
            return errno.errorcode.get(e.errno, str(e.errno))
    return "no errno"


def storage_retrier(definition: dict[str, Any], state: str = "ValidateMetadata") -> Retrier:
    """The Retry rule template.yaml gives StorageUnavailable in `state`: the runtime's own store calls retry as the stages' do."""
    for retrier in parse_retriers(definition["States"][state].get("Retry", []), state):
        if StorageUnavailable.__name__ in retrier.errors:
            return retrier
    raise ConfigurationError(f"template.yaml: {state} has no Retry rule for {StorageUnavailable.__name__}")


class RetryingStore:
    """The runtime's own object-store calls (uploads, reading outcomes, journalled refusals) retried on StorageUnavailable
    with the budget the template gives the stages' storage errors, so a throttle or a full-disk blip outside the workflow
    costs a wait, not a `resume`."""

    def __init__(self, inner: ObjectStore, retrier: Retrier, sleep: Callable[[float], None]) -> None:
        self.inner = inner
        self.retrier = retrier
        self.sleep = sleep

    def _retried(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.retrier.max_attempts + 1):
            try:
                return call(*args, **kwargs)
            except StorageUnavailable:
                if attempt == self.retrier.max_attempts:
                    raise
                self.sleep(self.retrier.delay(attempt))
        raise AssertionError("unreachable")

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        return self._retried(self.inner.put_bytes, bucket, key, data, content_type=content_type)

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        return self._retried(self.inner.put_file, bucket, key, path, content_type=content_type)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self._retried(self.inner.get_bytes, bucket, key)

    def head(self, bucket: str, key: str) -> StoredObject | None:
        return self._retried(self.inner.head, bucket, key)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return self._retried(self.inner.list_keys, bucket, prefix)

    def delete(self, bucket: str, key: str) -> None:
        self._retried(self.inner.delete, bucket, key)

    def close(self) -> None:
        wiring.close_all(self.inner)


class _StudyMetrics:
    """An EmfWriter that keeps one execution's documents (its stages may run on branch threads: list.extend is atomic)."""

    def __init__(self) -> None:
        self.documents: list[Mapping[str, Any]] = []

    def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        self.documents.extend(documents)


class LocalAws:
    """The embedded AWS: one per data dir and settings; a context manager that closes what it opened.

    The stages get their dependencies from this runtime's settings through each handler's own `build`
    (the door Lambda uses with the environment's settings): no environment variable is set, no module
    state is touched, so two runtimes in one process do not disturb each other.
    """

    def __init__(
        self,
        settings: Settings,
        template_path: Path = DEFAULT_TEMPLATE,
        sleep: Callable[[float], None] = time.sleep,
        branch_threads: int = 0,
    ) -> None:
        """`branch_threads`: threads a Parallel state's branches (a study's three models) may take beside the study's own.

        0 (the default): a study runs its models one after another, and studies run side by side on the workers. On
        the 2-core machine, shared, one worker ran 785 studies/min that way against 676 with the models in threads
        (median of 8 interleaved runs of 16 1024² studies, 2026-12-03), and the issue's measurement of the other
        side: the detector takes 6.6 ms beside the other two models against 3.9 ms alone. Threads buy latency
        only where cores would otherwise idle.
        """
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # What a killed earlier run was writing when it died (temp files only, never a half object): gone now.
        sweep_staging(staging_dir(settings.data_dir))
        self.template = Template(template_path)
        self.store = RetryingStore(wiring.object_store(settings), storage_retrier(self.template.definition()), sleep)
        try:  # the telemetry a killed earlier run had buffered but not yet delivered: into the lake now
            wiring.recover_telemetry(settings, self.store)
        except StorageUnavailable:
            pass  # still buffered, on disk: the next start delivers it
        (settings.data_dir / "logs").mkdir(exist_ok=True)
        self._log_file = open(settings.data_dir / "logs" / "radstream.log", "a")
        self._metrics = LocalEmfFile(settings.data_dir)  # the EMF lines Lambda would print, captured for the console
        # Each running execution's EMF documents, written to `_metrics` once when it ends (one write a study, not a stage).
        self._study_metrics: dict[str, _StudyMetrics] = {}
        self.rules = self.template.event_rules(settings.to_env())
        # The stage handlers parse their input into models and return a fresh model_dump: no copy either way (see invoke).
        self.machine = StateMachine(self.template.definition(), self.invoke, sleep=sleep, max_workers=branch_threads, copy_task_io=False)
        self._bindings: dict[str, tuple[StageHandler[Any], Any]] = {}
        self._dependencies: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._warmed: dict[str, str | None] | None = None
        self.close_warnings: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close what the runtime opened. Never raises: a disk that filled during the run must not cost the caller its
        summary; what could not be closed (telemetry left buffered for the next start, say) is in `close_warnings`."""
        with self._lock:
            dependencies, self._dependencies, self._bindings = list(self._dependencies.values()), {}, {}
        for resource in (*dependencies, self.store, self._metrics, self._log_file):
            try:
                with logs_to(self._log_file if not self._log_file.closed else None):  # what closing logs is the run's, not stdout's
                    wiring.close_all(resource)
            except Exception as e:
                name = type(resource).__name__
                self.close_warnings.append(
                    f"{name} not closed cleanly ({type(e).__name__}: {_errno_name(e)}); buffered telemetry is delivered by the next start"
                )

    def binding(self, resource: str) -> tuple[StageHandler[Any], Any]:
        """The handler a task resource names (ImageConfig.Command) and its dependencies, built once from this runtime's settings."""
        with self._lock:
            if resource not in self._bindings:
                module_name, _, attribute = self.template.handler_for(resource).rpartition(".")
                handler = getattr(importlib.import_module(module_name), attribute)
                if not isinstance(handler, StageHandler):
                    raise ConfigurationError(
                        f"{module_name}.{attribute} is not a StageHandler; the runtime cannot give it its dependencies"
                    )
                if handler.build not in self._dependencies:
                    self._dependencies[handler.build] = handler.build(self.settings)
                self._bindings[resource] = (handler, self._dependencies[handler.build])
            return self._bindings[resource]

    def warm(self) -> dict[str, str | None]:
        """Warm start: every task of template.yaml's workflow bound (its handler's dependencies built) and warmed
        (`StageHandler.warm`: model sessions loaded and run once, the export's highdicom/FHIR builders run on a
        synthetic study), once per runtime, before the first study. Returns each task resource's warm error type, or
        None; a failed warm start is logged and costs only the first study's time."""
        with self._lock:
            if self._warmed is not None:
                return self._warmed
        warmed: dict[str, str | None] = {}
        with logs_to(self._log_file):
            # Service integrations (the lane hand-off, never taken locally: docs/triage.md) have no handler to warm.
            for resource in filter(self.template.is_function, task_resources(self.template.definition())):
                handler, deps = self.binding(resource)
                if id(handler) not in {id(self._bindings[r][0]) for r in warmed}:
                    warmed[resource] = handler.warm(deps)
        self._flush_log_file()
        with self._lock:
            self._warmed = warmed
        return warmed

    def invoke(self, resource: str, payload: Any, context: TaskContext) -> Any:
        """Call a task's Lambda handler the way Lambda would: JSON values out, size-capped.

        No copy either way (the state machine is built with copy_task_io=False): a StageHandler never mutates its
        event (it parses it into models) and returns a fresh `model_dump(mode="json")`, values nothing else holds
        (tests/e2e/test_local_pipeline.py holds the first). The output is serialised (pydantic-core's encoder, UTF-8 as
        Step Functions counts) only to hold it to the payload limit.
        """
        handler, deps = self.binding(resource)
        metrics = self._study_metrics.get(context.execution_name) or self._metrics  # (an execution `start` did not begin: direct)
        with logs_to(self._log_file):
            output = handler.invoke(payload, LambdaContext(function_name=resource.rsplit(":", 1)[-1]), deps, metrics)
        size = len(to_json(output))
        if size > MAX_PAYLOAD_BYTES:
            raise StatesError("States.DataLimitExceeded", f"task {context.state_name} returned {size} bytes, over Step Functions' 256 KB")
        return output

    # --- uploads ---
    def study_id(self, folder: Path) -> str:
        files = study_files(folder)
        return upload_key_study_id(folder, files[-1]) if files[-1].suffix == ".json" else folder_study_id(folder)

    def upload(self, folder: Path, study_id: str) -> list[dict[str, Any]]:
        """Put a study folder's files under incoming/<study_id>/, sidecar last; return the S3 events.

        A study id names one input: the same files again are not written again (their events still start
        a run); other files under a known id are refused, never written over.
        """
        files = study_files(folder)
        bucket, prefix = self.settings.images_bucket, f"{INCOMING}{study_id}/"
        paths = {f"{prefix}{file.name}": file for file in files}
        existing = set(self.store.list_keys(bucket, prefix))
        if existing:
            self._check_same_input(study_id, folder, existing, {key: path.read_bytes() for key, path in paths.items()})
        events = []
        with durable_together():  # the study's files share a folder: one fsync of it, before any event goes out
            for key, path in paths.items():
                if key in existing:
                    events.append(s3_event(bucket, key, path.stat().st_size))
                else:  # the store moves the file as it moves best (locally a hard link, else a kernel copy: no byte through Python)
                    stored = self.store.put_file(bucket, key, path)
                    events.append(s3_event(stored.bucket, stored.key, stored.size))
        return events

    def _check_same_input(self, study_id: str, folder: Path, existing: set[str], contents: dict[str, bytes]) -> None:
        def name(key: str) -> str:
            return key.rsplit("/", 1)[-1]

        # Fewer files than the folder, each the same: an upload cut short (a crash, a full disk) that this one completes.
        if not existing <= set(contents):
            raise StudyConflict(
                f"incoming/{study_id}/ already holds {', '.join(sorted(map(name, existing)))}, and {folder} holds "
                f"{', '.join(sorted(map(name, contents)))}: a study id names one input; give the new input its own study_id",
                study_id=study_id,
            )
        for key in sorted(existing):
            stored, data = self.store.get_bytes(self.settings.images_bucket, key), contents[key]
            if stored != data:
                old, new = hashlib.sha256(stored).hexdigest()[:12], hashlib.sha256(data).hexdigest()[:12]
                raise StudyConflict(
                    f"incoming/{study_id}/{name(key)} already holds another file (sha256 {old}…, this one {new}…): "
                    "a study id names one input; give the new input its own study_id",
                    study_id=study_id,
                )

    def route(self, event: dict[str, Any]) -> list[Any]:
        """EventBridge: each rule whose pattern matches yields the execution input its transformer makes."""
        inputs = []
        for rule in self.rules:
            if matches(rule.pattern, event):
                inputs.append(apply_input_transformer(rule.input_paths_map, rule.input_template, event) if rule.input_template else event)
        return inputs

    def start(self, execution_input: dict[str, Any]) -> ExecutionResult:
        study_id = study_id_from_key(str(execution_input.get("key", "")))
        name = f"{_SAFE_ID.sub('_', study_id)[:60]}-{uuid.uuid4().hex[:8]}"
        self._study_metrics[name] = metrics = _StudyMetrics()
        try:
            return self.machine.run(execution_input, name=name)
        finally:
            self._study_metrics.pop(name, None)
            try:  # the execution's EMF documents, every stage's, in one write
                self._metrics.write(metrics.documents)
            except Exception as e:  # lost metrics are not a lost study
                with logs_to(self._log_file):
                    logger.warning("metrics not written", study_id=study_id, error_type=type(e).__name__)
            if self.settings.backend == "local":  # the execution's tensors (in memory, shared/wiring.py) are spent
                wiring.execution_artifacts(self.settings).delete_prefix(self.settings.artifacts_bucket, f"tensors/{study_id}/")

    # --- outcomes ---
    def outcome(self, source: str, study_id: str, execution: ExecutionResult) -> StudyOutcome:
        result = StudyOutcome(
            study_id=study_id,
            source=source,
            status="succeeded" if execution.status == "SUCCEEDED" else "failed",
            execution_name=execution.name,
            end_to_end_ms=round((execution.stop_time - execution.start_time) * 1000, 1),
        )
        bucket = self.settings.results_bucket
        if result.status == "succeeded":
            key = f"results/{study_id}/result.json"
            stored = json.loads(self.store.get_bytes(bucket, key))
            result.findings = [
                {"label": f["label"], "probability": f["probability"], "positive": f["positive"]}
                for f in sorted(stored["findings"], key=lambda f: -f["probability"])
            ]
            result.detections = len(stored["detections"])
            if stored.get("critical_findings") is not None:
                result.critical_findings = [c["rule"] for c in stored["critical_findings"]]
            delivered = (execution.output or {}).get("delivered") if isinstance(execution.output, dict) else None
            if isinstance(delivered, dict):
                result.delivery = {k: v for k, v in delivered.items() if k in ("destinations", "skipped")}
                if delivered.get("dead_letter"):
                    result.delivery["dead_letter"] = self._location(delivered["dead_letter"]["bucket"], delivered["dead_letter"]["key"])
        else:
            key = f"failed/{study_id}/error.json"
            try:
                record = json.loads(self.store.get_bytes(bucket, key))
            except (RadStreamError, ValueError):  # not there, or the store itself is failing: not recorded
                record = None
            if record is None or record.get("execution_id") != execution.execution_id:
                # The workflow ended before (or without) writing this run's record: RecordFailure failed too
                # (FailureNotRecorded, the study's own error as the cause), or a last step such as SendTelemetry did.
                result.stage, result.error_type = (
                    ("record", FailureNotRecorded.__name__)
                    if execution.error == FailureNotRecorded.__name__
                    else ("workflow", execution.error)
                )
                cause = (
                    f"{execution.cause} and its failure record could not be written"
                    if execution.error == FailureNotRecorded.__name__
                    else f"the workflow ended with {execution.error}"
                )
                result.message = f"study {study_id}: {cause}; the input is kept: `radstream resume` runs it again"
                return result
            result.stage, result.error_type, result.message = record["stage"], record["error_type"], record["message"]
        result.output = self._location(bucket, key)
        return result

    def refused(self, source: str, study_id: str, stage: FailureStage, error: Exception) -> StudyOutcome:
        """A study that failed outside the workflow (its upload, or the runtime itself): its failure record, if it can be written.

        Our own errors say what is wrong; anything else is named by type and logged with where it came from,
        never with its message (it could carry input data).
        """
        if isinstance(error, RadStreamError):
            error_type, message = error.error_name, str(error)
        else:
            error_type = type(error).__name__
            message = f"study {study_id}: unexpected {error_type} in the local runtime ({stage}); see logs/radstream.log"
            with logs_to(self._log_file):
                logger.error(
                    "study failed outside the workflow",
                    study_id=study_id,
                    stage=stage,
                    error_type=error_type,
                    code_path=code_location(error),
                )
            self._flush_log_file()
        outcome = StudyOutcome(study_id=study_id, source=source, status="failed", stage=stage, error_type=error_type, message=message)
        try:
            result = self._has_result(study_id)
        except Exception:
            return outcome
        if result:
            # The study's own result stays the only record under its id. A refused second input is finished business
            # (its outcome points at the result it left untouched); anything else is left unrecorded: resume runs it again.
            if isinstance(error, StudyConflict):
                outcome.output = self._location(self.settings.results_bucket, f"results/{study_id}/result.json")
            return outcome
        bucket, key = self.settings.results_bucket, f"failed/{study_id}/error.json"
        record = FailureRecord(
            study_id=study_id,
            stage=stage,
            error_type=error_type,
            message=message,
            input=ObjectRef(bucket=self.settings.images_bucket, key=f"{INCOMING}{study_id}/"),
            execution_id="none",
            failed_at=datetime.now(UTC),
        )
        try:
            self.store.put_bytes(bucket, key, record.model_dump_json(indent=2).encode(), content_type="application/json")
        except Exception as e:
            outcome.message = f"{message} (and its failure record could not be written: {type(e).__name__}; resume runs it again)"
            return outcome
        outcome.output = self._location(bucket, key)
        return outcome

    def _location(self, bucket: str, key: str) -> str:
        path = self.local_path(bucket, key)
        return str(path) if path is not None else f"s3://{bucket}/{key}"

    def local_path(self, bucket: str, key: str) -> Path | None:
        """Where an object lies on this machine, where the store is the local folders (else None: S3)."""
        store = self.store.inner
        local = getattr(store, "inner", store)  # under the fault injector, when one is configured
        return local.path(bucket, key) if isinstance(local, LocalObjectStore) else None

    def _has_result(self, study_id: str) -> bool:
        return self.store.head(self.settings.results_bucket, f"results/{study_id}/result.json") is not None

    # --- running ---
    def run_folder(self, folder: Path, study_id: str | None = None) -> StudyOutcome:
        source = str(folder)
        try:
            study_id = study_id or self.study_id(folder)
        except Exception as e:
            return self.refused(source, folder_study_id(folder), "upload", e)
        try:
            events = self.upload(folder, study_id)
        except Exception as e:
            return self.refused(source, study_id, "upload", e)
        return self._run(source, study_id, events)

    def run_key(self, key: str) -> StudyOutcome:
        bucket = self.settings.images_bucket
        study_id, source = study_id_from_key(key), f"s3://{bucket}/{key}"
        try:
            head = self.store.head(bucket, key)
            if head is None:
                raise ObjectNotFound(f"no object s3://{bucket}/{key} to run", study_id=study_id)
        except Exception as e:
            return self.refused(source, study_id, "upload", e)
        return self._run(source, study_id, [s3_event(bucket, key, head.size)])

    def _run(self, source: str, study_id: str, events: list[dict[str, Any]]) -> StudyOutcome:
        try:
            executions = [self.start(execution_input) for event in events for execution_input in self.route(event)]
            if len(executions) != 1:
                raise ConfigurationError(
                    f"{source}: its upload started {len(executions)} executions; the rule in template.yaml should start exactly one"
                )
            execution = executions[0]
            try:
                write_trace(self.settings.data_dir, execution, study_id)
            except OSError as e:  # a lost trace is not a lost study
                with logs_to(self._log_file):
                    logger.warning("trace not written", study_id=study_id, error_type=type(e).__name__)
            return self.outcome(source, study_id, execution)
        except Exception as e:
            return self.refused(source, study_id, "runtime", e)
        finally:
            self._flush_log_file()

    def _flush_log_file(self) -> None:
        """The study's log lines, out of the buffer and into logs/radstream.log (once per study, not once per line)."""
        try:
            flush_logs(self._log_file)
        except (OSError, ValueError):  # a full disk or a closed file: the lines wait for the next flush or are lost, never the study
            pass
