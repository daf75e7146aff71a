"""Radiologists' feedback on results: per finding agree / disagree / corrected, per box accepted / rejected.

Each submission (a CSV file, one console form, one final report from a file or arriving live through
radstream.feedback_listen) is checked against the study's result and becomes one lake object,
`feedback/source=<csv|console|fhir|hl7>/dt=YYYY-MM-DD/<submission id>.ndjson.gz` in the telemetry bucket, never rewritten: who
(a reader's pseudonymous id), when and what, kept whole, is the audit trail. The named queries count each study and
label's latest verdict (model_performance, model_calibration; docs/model-lifecycle.md).

A verdict becomes the truth the metrics use: `agree` means the finding is as the model said, `disagree` the opposite,
`corrected` says `present` explicitly (a finding the model did not list at all, a label of another model version).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from datetime import UTC, datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, field_validator

from radstream.cli_args import add_data_dir
from shared.errors import ObjectNotFound
from shared.lake_tables import SUFFIX, ndjson_gz
from shared.storage import ObjectStore

FEEDBACK = "feedback"
Verdict = Literal["agree", "disagree", "corrected", "accepted", "rejected"]
# A reader is named by a pseudonymous id (initials and a number, a staff code): never a person's full name.
READER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
CSV_COLUMNS = ("study_id", "label", "verdict", "present", "box_index", "reader")


class FeedbackRefused(ValueError):
    """A row or submission that cannot be recorded; the message names the row and the field."""


class FeedbackItem(BaseModel):
    study_id: str
    label: str
    verdict: Verdict
    present: bool | None = None  # the reader's call, needed with `corrected`
    box_index: int | None = None  # which of the result's detections (0-based), with accepted / rejected

    @field_validator("present", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("box_index", mode="before")
    @classmethod
    def _blank_index_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


def _result(store: ObjectStore, results_bucket: str, study_id: str) -> dict[str, Any]:
    try:
        return json.loads(store.get_bytes(results_bucket, f"results/{study_id}/result.json"))
    except ObjectNotFound:
        raise FeedbackRefused(f"study {study_id!r} has no result to give feedback on") from None


def feedback_row(item: FeedbackItem, result: dict[str, Any], reader: str, source: str, time: datetime) -> dict[str, Any]:
    """The lake row of one verdict, with the truth it implies and the model version it judged."""
    models = result.get("models", {})
    base = {"time": time.isoformat(), "study_id": item.study_id, "label": item.label, "verdict": item.verdict, "reader": reader}
    if item.verdict in ("accepted", "rejected"):
        detections = result.get("detections", [])
        if item.box_index is None or not 0 <= item.box_index < len(detections):
            raise FeedbackRefused(f"{item.study_id}: box_index must name one of the result's {len(detections)} boxes")
        box = detections[item.box_index]
        if box["label"] != item.label:
            raise FeedbackRefused(f"{item.study_id}: box {item.box_index} is {box['label']!r}, not {item.label!r}")
        model = models.get("anomaly_detector", {})
        return {**base, "kind": "box", "box_index": item.box_index, "present": item.verdict == "accepted", **_version(model)}
    finding = next((f for f in result.get("findings", []) if f["label"] == item.label), None)
    if item.verdict == "corrected":
        if item.present is None:
            raise FeedbackRefused(f"{item.study_id} {item.label}: a correction says present (true or false)")
        present = item.present
    elif finding is None:
        raise FeedbackRefused(f"{item.study_id}: the result has no finding {item.label!r} to agree or disagree with (use corrected)")
    else:
        present = finding["positive"] if item.verdict == "agree" else not finding["positive"]
    model = models.get("chest_xray_classifier", {})
    return {**base, "kind": "finding", "box_index": None, "present": present, **_version(model)}


def _version(model: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": model.get("name"), "model_version": model.get("version")}


def record_feedback(
    store: ObjectStore,
    items: list[FeedbackItem],
    *,
    reader: str,
    source: Literal["csv", "console", "fhir", "hl7"],
    results_bucket: str = "results",
    lake_bucket: str = "telemetry",
    time: datetime | None = None,
    key: str | None = None,
) -> tuple[str, int]:
    """Check every item against its study's result, then write them as one lake object; returns (its key, rows)."""
    if not READER.match(reader):
        raise FeedbackRefused("reader must be a pseudonymous id: letters, digits, . _ - (at most 32), never a full name")
    if not items:
        raise FeedbackRefused("no feedback to record")
    time = time or datetime.now(UTC)
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for item in items:
        if item.study_id not in results:
            results[item.study_id] = _result(store, results_bucket, item.study_id)
        rows.append(feedback_row(item, results[item.study_id], reader, source, time))
    key = key or f"{FEEDBACK}/source={source}/dt={time.strftime('%Y-%m-%d')}/{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    store.put_bytes(lake_bucket, key, ndjson_gz(rows), content_type="application/x-ndjson")
    return key, len(rows)


def parse_csv(text: str) -> list[tuple[str, FeedbackItem]]:
    """Rows of a feedback CSV (header: study_id,label,verdict[,present][,box_index],reader), each with its reader."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"study_id", "label", "verdict", "reader"} - set(reader.fieldnames or [])
    if missing:
        raise FeedbackRefused(f"the CSV needs the columns {', '.join(CSV_COLUMNS)} (missing: {', '.join(sorted(missing))})")
    rows = []
    for line, row in enumerate(reader, start=2):
        name = (row.get("reader") or "").strip()
        if not READER.match(name):
            raise FeedbackRefused(f"line {line}: reader must be a pseudonymous id (letters, digits, . _ -), never a full name")
        try:
            rows.append((name, FeedbackItem.model_validate({k: v for k, v in row.items() if k in CSV_COLUMNS and k != "reader"})))
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise FeedbackRefused(f"line {line}: {fields}") from e
    return rows


def import_csv(path: Path, store: ObjectStore, results_bucket: str = "results", lake_bucket: str = "telemetry") -> int:
    """A CSV of feedback, one submission per reader; returns the rows recorded. Nothing is written unless every row holds."""
    by_reader: dict[str, list[FeedbackItem]] = {}
    for name, item in parse_csv(Path(path).read_text()):
        by_reader.setdefault(name, []).append(item)
    now = datetime.now(UTC)
    for name, group in by_reader.items():  # every row checked against its result before anything is written
        for item in group:
            feedback_row(item, _result(store, results_bucket, item.study_id), name, "csv", now)
    return sum(
        record_feedback(store, group, reader=name, source="csv", results_bucket=results_bucket, lake_bucket=lake_bucket, time=now)[1]
        for name, group in by_reader.items()
    )


# --- a final report as a FHIR DiagnosticReport ---
# How a final report names the RadStream study it reads: an identifier in this system whose value is the study id
# (the RIS echoes it from RadStream's own report, or maps its accession to it). Other identifiers are ignored.
STUDY_ID_SYSTEM = "urn:radstream:study-id"
FINAL_STATUSES = ("final", "amended", "corrected", "appended")


def report_items(report: dict[str, Any], result: dict[str, Any]) -> list[FeedbackItem]:
    """The verdicts a final report implies on each finding of the result: a finding whose code (services/export/codes:
    SNOMED CT, else the private scheme) is among the report's conclusionCode is present, any other absent. A report
    without conclusionCode says nothing codable, so it is refused rather than read as "all absent"."""
    from services.export.codes import FHIR_SYSTEMS, finding

    concluded = {(c.get("system"), c.get("code")) for cc in report.get("conclusionCode") or [] for c in cc.get("coding") or []}
    if not concluded:
        raise FeedbackRefused("the report has no conclusionCode: nothing to compare the findings with")
    items = []
    for f in result.get("findings", []):
        code = finding(f["label"])
        present = (FHIR_SYSTEMS[code.scheme], code.value) in concluded
        items.append(
            FeedbackItem(study_id=result["study_id"], label=f["label"], verdict="agree" if present == f["positive"] else "disagree")
        )
    return items


class NotAReport(FeedbackRefused):
    """Input that is not a report at all (not JSON, not a FHIR resource, not an HL7 v2 message): the sender's syntax is
    wrong, not the report's content (HTTP 400 against 422; both an HL7 AE)."""


@dataclass(frozen=True)
class FinalReport:
    """A final report's verdicts, from a file or a live feed: `receipt` names the report (an HL7 message's sender and
    control id, a FHIR report's content digest) so that the same report delivered twice is recorded once."""

    source: Literal["fhir", "hl7"]
    reader: str
    items: list[FeedbackItem]
    receipt: str


def _pseudonym(who: str) -> str:
    # The interpreter's reference or name stays in the report; the lake keeps a pseudonym of it.
    return "reader-" + hashlib.sha256(who.encode()).hexdigest()[:10]


def fhir_diagnostic_report(raw: Any) -> dict[str, Any]:
    """The DiagnosticReport in a FHIR payload: the resource itself, or the one DiagnosticReport entry of a transaction
    (or batch) Bundle; validated by fhir.resources (R5). Raises NotAReport for anything else."""
    from fhir.resources.bundle import Bundle
    from fhir.resources.diagnosticreport import DiagnosticReport

    if not isinstance(raw, dict):
        raise NotAReport("the body is not a FHIR resource (a JSON object with resourceType)")
    try:
        if raw.get("resourceType") == "Bundle":
            Bundle.model_validate(raw)
            if raw.get("type") not in ("transaction", "batch"):
                raise NotAReport(f"a Bundle of type {raw.get('type')!r}: only a transaction or batch Bundle is taken")
            reports = [e["resource"] for e in raw.get("entry") or [] if (e.get("resource") or {}).get("resourceType") == "DiagnosticReport"]
            if len(reports) != 1:
                raise NotAReport(f"the Bundle holds {len(reports)} DiagnosticReports: one is taken")
            raw = reports[0]
        DiagnosticReport.model_validate(raw)
    except (ValueError, ValidationError) as e:
        if isinstance(e, FeedbackRefused):
            raise
        raise NotAReport(f"not a FHIR DiagnosticReport ({type(e).__name__})") from e
    return raw


def parse_fhir_report(raw: Any, store: ObjectStore, results_bucket: str = "results") -> FinalReport:
    """A FHIR DiagnosticReport (or a Bundle holding one) with status final: its verdicts on the study's result."""
    raw = fhir_diagnostic_report(raw)
    if raw.get("status") not in FINAL_STATUSES:
        raise FeedbackRefused(
            f"the report's status is {raw.get('status')!r}: only a final report ({', '.join(FINAL_STATUSES)}) is feedback"
        )
    study_ids = [i.get("value") for i in raw.get("identifier") or [] if i.get("system") == STUDY_ID_SYSTEM]
    if len(study_ids) != 1 or not study_ids[0]:
        raise FeedbackRefused(f"the report needs one identifier with system {STUDY_ID_SYSTEM} naming the RadStream study")
    interpreters = raw.get("resultsInterpreter") or []
    who = json.dumps(interpreters[0], sort_keys=True) if interpreters else ""
    if not who:
        raise FeedbackRefused("the report names no resultsInterpreter: feedback says who read it")
    items = report_items(raw, _result(store, results_bucket, study_ids[0]))
    receipt = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()  # an amended report differs: recorded
    return FinalReport("fhir", _pseudonym(who), items, receipt)


def import_fhir_report(path: Path, store: ObjectStore, results_bucket: str = "results", lake_bucket: str = "telemetry") -> int:
    """A FHIR DiagnosticReport file (R5, validated by fhir.resources) with status final: its verdicts, reader pseudonymised."""
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as e:
        raise NotAReport(f"{Path(path).name} is not a FHIR DiagnosticReport ({type(e).__name__})") from e
    try:
        report = parse_fhir_report(raw, store, results_bucket)
    except NotAReport as e:
        raise NotAReport(f"{Path(path).name} is {e}") from e
    return record_report(report, store, results_bucket=results_bucket, lake_bucket=lake_bucket)[1]


# --- a final report as HL7 v2 ORU^R01 ---
# The RadStream study the report reads: OBR-3 (filler order number) = <study id>^RADSTREAM. Each finding: an OBX of type
# CWE whose OBX-3 is the finding's code (services/export/codes: SNOMED CT "SCT", else "99RADSTREAM") and whose OBX-5 is
# Present (SCT 52101004) or Absent (SCT 272519000), the qualitative evaluation RadStream's own SR uses.
HL7_NAMESPACE = "RADSTREAM"
HL7_EVALUATIONS = {("52101004", "SCT"): True, ("272519000", "SCT"): False}
HL7_FINAL = ("F", "C")  # OBR-25 / OBX-11: final, corrected


def parse_hl7_report(text: str, store: ObjectStore, results_bucket: str = "results") -> FinalReport:
    """An ORU^R01 final report: its coded findings as verdicts, the interpreter (OBR-32) kept only as a pseudonym. The
    patient segments are never read. The receipt is the sender (MSH-3, MSH-4) and control id (MSH-10)."""
    import hl7
    from services.export.codes import finding

    try:
        message = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))
        msh = message.segment("MSH")
        kind = str(msh(9))
        obr = message.segment("OBR")
    except (KeyError, ValueError, hl7.ParseException) as e:
        raise NotAReport(f"not an HL7 v2 message with an OBR ({type(e).__name__})") from e
    if not kind.startswith("ORU^R01"):
        raise FeedbackRefused(f"the message is {kind or 'untyped'}, not an ORU^R01 result")
    if not str(msh(10)):
        raise FeedbackRefused("MSH-10 (message control id) is empty: a report is recorded once by its id")
    if str(obr(25)) not in HL7_FINAL:
        raise FeedbackRefused(f"OBR-25 result status is {str(obr(25))!r}: only a final report (F, C) is feedback")
    if str(obr(3)(1)(2)) != HL7_NAMESPACE or not str(obr(3)(1)(1)):
        raise FeedbackRefused(f"OBR-3 must name the RadStream study as <study id>^{HL7_NAMESPACE}")
    interpreter = str(obr(32))
    if not interpreter:
        raise FeedbackRefused("OBR-32 names no principal result interpreter: feedback says who read it")
    result = _result(store, results_bucket, str(obr(3)(1)(1)))
    by_code = {(finding(f["label"]).value, finding(f["label"]).scheme): f for f in result.get("findings", [])}
    items = []
    for obx in message.segments("OBX"):
        if str(obx(2)) != "CWE" or str(obx(11)) not in HL7_FINAL:
            continue
        f = by_code.get((str(obx(3)(1)(1)), str(obx(3)(1)(3))))
        present = HL7_EVALUATIONS.get((str(obx(5)(1)(1)), str(obx(5)(1)(3))))
        if f is None or present is None:
            continue  # a finding no model of this study decides on, or an evaluation other than present / absent
        items.append(
            FeedbackItem(study_id=result["study_id"], label=f["label"], verdict="agree" if present == f["positive"] else "disagree")
        )
    if not items:
        raise FeedbackRefused("no final OBX names one of the result's findings as present or absent")
    receipt = hashlib.sha256("|".join(("hl7", str(msh(3)), str(msh(4)), str(msh(10)))).encode()).hexdigest()
    return FinalReport("hl7", _pseudonym(interpreter), items, receipt)


def import_hl7_report(path: Path, store: ObjectStore, results_bucket: str = "results", lake_bucket: str = "telemetry") -> int:
    """An ORU^R01 final report file (one message)."""
    try:
        report = parse_hl7_report(Path(path).read_text(), store, results_bucket)
    except NotAReport as e:
        raise NotAReport(f"{Path(path).name} is {e}") from e
    return record_report(report, store, results_bucket=results_bucket, lake_bucket=lake_bucket)[1]


# Receipts of final reports already recorded, beside the feedback table (not under it: no Glue table reads them).
RECEIPTS = "feedback_receipts"


def record_report(
    report: FinalReport, store: ObjectStore, *, results_bucket: str = "results", lake_bucket: str = "telemetry"
) -> tuple[str, int]:
    """Record a final report's verdicts once: returns (the feedback object's key, rows recorded now; 0 for a report
    already recorded). The receipt, naming the feedback object's key and time, is written (fsynced) before the object;
    a crash between the two leaves a receipt whose object is missing, and the sender's retry writes exactly that object.
    Both writes are durable when this returns: then, and only then, may the sender be told so."""
    receipt_key = f"{RECEIPTS}/source={report.source}/{report.receipt}.json"
    try:
        receipt = json.loads(store.get_bytes(lake_bucket, receipt_key))
        key, time = receipt["key"], datetime.fromisoformat(receipt["time"])
    except ObjectNotFound:
        time = datetime.now(UTC)
        key = f"{FEEDBACK}/source={report.source}/dt={time.strftime('%Y-%m-%d')}/{time.strftime('%H%M%S')}-{report.receipt[:12]}{SUFFIX}"
        store.put_bytes(
            lake_bucket, receipt_key, json.dumps({"key": key, "time": time.isoformat()}).encode(), content_type="application/json"
        )
    else:
        if store.head(lake_bucket, key) is not None:
            return key, 0
    return record_feedback(
        store,
        report.items,
        reader=report.reader,
        source=report.source,
        results_bucket=results_bucket,
        lake_bucket=lake_bucket,
        time=time,
        key=key,
    )


def add_parser(models_sub: Any) -> None:
    fb = models_sub.add_parser(
        "feedback",
        help="import radiologists' feedback: a CSV (study_id,label,verdict,present,box_index,reader) or a final FHIR DiagnosticReport (.json)",
    )
    fb.add_argument("csv", help="the CSV file, a FHIR DiagnosticReport (.json) or an HL7 ORU^R01 message (.hl7)")
    add_data_dir(fb)
    fb.set_defaults(func=cmd_feedback)


def cmd_feedback(args: Any) -> int:
    import sys

    from shared.settings import Settings
    from shared.storage import LocalObjectStore

    settings = Settings()
    source, read = {".json": ("fhir", import_fhir_report), ".hl7": ("hl7", import_hl7_report)}.get(
        Path(args.csv).suffix, ("csv", import_csv)
    )
    try:
        count = read(Path(args.csv), LocalObjectStore(Path(args.data_dir)), settings.results_bucket, settings.telemetry_bucket)
    except (FeedbackRefused, OSError) as e:
        print(f"radstream: {e}", file=sys.stderr)
        return 2
    if count == 0:  # a final report recorded before (the same HL7 message id, the same FHIR report)
        print(f"{Path(args.csv).name} was recorded before: nothing added")
        return 0
    print(f"recorded {count} feedback rows from {Path(args.csv).name} in the lake ({FEEDBACK}/source={source})")
    return 0
