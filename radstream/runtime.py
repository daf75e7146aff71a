"""The embedded runtime: folders for buckets, template.yaml's rule and state machine, handlers in-process.

An upload writes the study's files into the images bucket (image first, sidecar last) and produces
the S3 "Object Created" events that S3 would send to EventBridge. Each event goes through the
template's rule pattern and input transformer; each match starts an execution of the template's
state machine, whose tasks call the very Lambda handlers the container images run.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from radstream.asl import ExecutionResult, StateMachine, StatesError, TaskContext
from radstream.eventpattern import apply_input_transformer, matches
from radstream.template import DEFAULT_TEMPLATE, Template
from radstream.traces import write_trace
from shared import wiring
from shared.errors import ConfigurationError, RadStreamError
from shared.messages import INCOMING, study_id_from_key
from shared.observability import redirect_logs
from shared.settings import ENVIRONMENT, Settings
from shared.sidecar import parse_sidecar_bytes
from shared.storage import LocalObjectStore

# Step Functions refuses state payloads over 256 KB; the local runtime holds tasks to the same limit.
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
    output: str | None = None


def s3_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """The event S3 sends to EventBridge for a PUT (EventBridge notifications enabled on the bucket)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created", "source": "aws.s3",
        "account": "000000000000", "time": now, "region": "local",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0", "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "sequencer": uuid.uuid4().hex[:16]},
            "request-id": uuid.uuid4().hex[:16], "requester": "local", "reason": "PutObject",
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
        raise ConfigurationError(f"{path} holds no study: expected a folder with a sidecar (*.json) or a DICOM file (*.dcm), or folders of them")
    return studies


def is_study(folder: Path) -> bool:
    return any(folder.glob("*.json")) or any(folder.glob("*.dcm"))


def upload_key_study_id(folder: Path, sidecar: Path) -> str:
    """The id that names the study's upload prefix: the sidecar's study_id when it is safe, else the folder's name."""
    try:
        claimed = parse_sidecar_bytes(sidecar.read_bytes()).get("study_id")
    except (OSError, ValueError, AttributeError):
        claimed = None
    if isinstance(claimed, str) and claimed and not _SAFE_ID.search(claimed) and claimed not in (".", ".."):
        return claimed
    return _SAFE_ID.sub("_", folder.name) or "study"


class LocalRuntime:
    def __init__(self, settings: Settings, template_path: Path = DEFAULT_TEMPLATE, workers: int = 2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.workers = max(1, workers)
        self.store = wiring.object_store(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The stages read their settings from the environment, as in Lambda; close() puts it back.
        stage_env = settings.to_env()
        self._saved_env = {var: os.environ.get(var) for var in ENVIRONMENT.values()}
        for var in ENVIRONMENT.values():
            if var in stage_env:
                os.environ[var] = stage_env[var]
            else:
                os.environ.pop(var, None)
        (settings.data_dir / "logs").mkdir(exist_ok=True)
        self._log_file = open(settings.data_dir / "logs" / "radstream.log", "a")  # noqa: SIM115 - held for the runtime's life
        redirect_logs(self._log_file)
        wiring.reset_all()  # the stages build their dependencies again, from these settings
        self.template = Template(template_path)
        self.rules = self.template.event_rules(settings.to_env())
        self.machine = StateMachine(self.template.definition(), self.invoke, sleep=sleep, max_workers=8)
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        redirect_logs(None)
        self._log_file.close()
        for var, value in self._saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        wiring.reset_all()

    def handler(self, resource: str) -> Callable[[dict[str, Any], Any], Any]:
        with self._lock:
            if resource not in self._handlers:
                module_name, _, attribute = self.template.handler_for(resource).rpartition(".")
                self._handlers[resource] = getattr(importlib.import_module(module_name), attribute)
            return self._handlers[resource]

    def invoke(self, resource: str, payload: Any, context: TaskContext) -> Any:
        """Call a task's Lambda handler the way Lambda would: JSON out, size-capped.

        The state machine already hands each task its own copy of the input, so only the output crosses
        a JSON boundary here (which also normalises it as Lambda's serialisation would).
        """
        output = self.handler(resource)(payload, LambdaContext(function_name=resource.rsplit(":", 1)[-1]))
        encoded = json.dumps(output)
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise StatesError("States.DataLimitExceeded", f"task {context.state_name} returned {len(encoded)} bytes, over Step Functions' 256 KB")
        return json.loads(encoded)

    def upload(self, folder: Path) -> tuple[str, list[dict[str, Any]]]:
        """Put a study folder's files under incoming/<study_id>/, sidecar last; return the S3 events."""
        sidecars, dicoms = sorted(folder.glob("*.json")), sorted(folder.glob("*.dcm"))
        # Each .json or .dcm landing under incoming/ starts a run (template.yaml's rule), so a study has exactly one.
        if len(sidecars) + len(dicoms) != 1:
            raise ConfigurationError(
                f"{folder}: a study folder holds one sidecar (*.json) with its PNG/JPEG image, or one DICOM file (*.dcm) alone; "
                f"found {len(sidecars)} sidecar(s) and {len(dicoms)} DICOM file(s)"
            )
        study_id = upload_key_study_id(folder, sidecars[0]) if sidecars else (_SAFE_ID.sub("_", folder.name) or "study")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".json") + sidecars
        events = []
        for file in files:
            key = f"{INCOMING}{study_id}/{file.name}"
            stored = self.store.put_bytes(self.settings.images_bucket, key, file.read_bytes())
            events.append(s3_event(stored.bucket, stored.key, stored.size))
        return study_id, events

    def route(self, event: dict[str, Any]) -> list[Any]:
        """EventBridge: each rule whose pattern matches yields the execution input its transformer makes."""
        inputs = []
        for rule in self.rules:
            if matches(rule.pattern, event):
                inputs.append(apply_input_transformer(rule.input_paths_map, rule.input_template, event) if rule.input_template else event)
        return inputs

    def start(self, execution_input: dict[str, Any]) -> ExecutionResult:
        study_id = study_id_from_key(str(execution_input.get("key", "")))
        return self.machine.run(execution_input, name=f"{_SAFE_ID.sub('_', study_id)[:60]}-{uuid.uuid4().hex[:8]}")

    def outcome(self, source: str, study_id: str, execution: ExecutionResult) -> StudyOutcome:
        result = StudyOutcome(
            study_id=study_id, source=source, status="succeeded" if execution.status == "SUCCEEDED" else "failed",
            execution_name=execution.name, end_to_end_ms=round((execution.stop_time - execution.start_time) * 1000, 1),
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
        else:
            key = f"failed/{study_id}/error.json"
            if self.store.head(bucket, key):
                record = json.loads(self.store.get_bytes(bucket, key))
                result.stage, result.error_type, result.message = record["stage"], record["error_type"], record["message"]
            else:  # the failure path itself failed: the execution's own error is all there is
                result.error_type, result.message = execution.error, execution.cause
        if self.store.head(bucket, key):
            result.output = str(self.store.path(bucket, key)) if isinstance(self.store, LocalObjectStore) else f"s3://{bucket}/{key}"
        return result

    def run_folder(self, folder: Path) -> StudyOutcome:
        try:
            study_id, events = self.upload(folder)
        except RadStreamError as e:  # this study never started; the rest of the batch goes on
            return StudyOutcome(study_id=folder.name, source=str(folder), status="failed", stage="upload", error_type=e.error_name, message=str(e))
        return self._run(str(folder), study_id, events)

    def _run(self, source: str, study_id: str, events: list[dict[str, Any]]) -> StudyOutcome:
        executions = [self.start(execution_input) for event in events for execution_input in self.route(event)]
        if len(executions) != 1:
            raise ConfigurationError(f"{source}: its upload started {len(executions)} executions; the rule in template.yaml should start exactly one")
        write_trace(self.settings.data_dir, executions[0], study_id)
        return self.outcome(source, study_id, executions[0])

    def pending(self) -> list[str]:
        """Uploads that start a run (by the template's rule) but whose study has neither a result nor a failure record.

        What a crash between upload and result leaves behind; `resume` runs them again.
        """
        bucket, results = self.settings.images_bucket, self.settings.results_bucket
        keys = []
        for key in self.store.list_keys(bucket, INCOMING):
            head = self.store.head(bucket, key)
            if head is None or not self.route(s3_event(bucket, key, head.size)):
                continue
            study_id = study_id_from_key(key)
            if not (self.store.head(results, f"results/{study_id}/result.json") or self.store.head(results, f"failed/{study_id}/error.json")):
                keys.append(key)
        return keys

    def run_key(self, key: str) -> StudyOutcome:
        bucket = self.settings.images_bucket
        head = self.store.head(bucket, key)
        if head is None:
            raise ConfigurationError(f"no object s3://{bucket}/{key} to run")
        return self._run(f"s3://{bucket}/{key}", study_id_from_key(key), [s3_event(bucket, key, head.size)])

    def run_many(self, folders: Iterable[Path], on_done: Callable[[StudyOutcome], None] | None = None) -> list[StudyOutcome]:
        return self._map(self.run_folder, list(folders), on_done)

    def resume(self, keys: Iterable[str], on_done: Callable[[StudyOutcome], None] | None = None) -> list[StudyOutcome]:
        return self._map(self.run_key, list(keys), on_done)

    def _map(self, run: Callable[[Any], StudyOutcome], items: list[Any], on_done: Callable[[StudyOutcome], None] | None) -> list[StudyOutcome]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="study") as pool:
            outcomes = []
            for outcome in pool.map(run, items):
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)
        return outcomes
