"""Radiologists' feedback from a CSV into the lake, and the metrics the named queries compute from it, checked
against a hand-computed example."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radstream.analytics import DuckDBQueryRunner
from radstream.cli import main
from radstream.feedback import FeedbackItem, FeedbackRefused, record_feedback
from shared.lake_tables import MODEL_OUTPUTS, put_rows
from shared.storage import LocalObjectStore

CLASSIFIER = "chest_xray_classifier"
# Ten studies, Edema. (model positive, truth): TP 4, FN 1, TN 3, FP 2. s0-s4 at site-a, s5-s9 at site-b.
CELLS = [(True, True)] * 4 + [(False, True)] + [(False, False)] * 3 + [(True, False)] * 2
PROBABILITY = {True: 0.85, False: 0.15}


def put_study(store: LocalObjectStore, i: int, positive: bool, now: datetime) -> None:
    study_id = f"s{i}"
    result = {
        "study_id": study_id,
        "models": {CLASSIFIER: {"name": CLASSIFIER, "version": "1", "provenance": "reference model trained on synthetic phantoms"}},
        "findings": [{"label": "Edema", "probability": PROBABILITY[positive], "threshold": 0.5, "positive": positive}],
        "detections": [{"label": "nodule", "score": 0.9, "box": [1, 1, 5, 5]}],
    }
    store.put_bytes("results", f"results/{study_id}/result.json", json.dumps(result).encode())
    row = {
        "time": now.isoformat(),
        "study_id": study_id,
        "execution_id": "e",
        "model_name": CLASSIFIER,
        "model_version": "1",
        "kind": "classifier",
        "label": "Edema",
        "probability": PROBABILITY[positive],
        "threshold": 0.5,
        "positive": positive,
        "latency_ms": 1.0,
        "site": "site-a" if i < 5 else "site-b",
        "scanner": "Acme DR1",
    }
    put_rows(store, "telemetry", MODEL_OUTPUTS, "live", now, study_id, "e", [row])


@pytest.fixture
def lake(tmp_path) -> Path:
    data = tmp_path / "data"
    store = LocalObjectStore(data)
    now = datetime.now(UTC)
    for i, (positive, _) in enumerate(CELLS):
        put_study(store, i, positive, now)
    # The verdicts, three ways of saying the truth: agree (as the model said), disagree (the opposite), corrected.
    lines = ["study_id,label,verdict,present,box_index,reader"]
    for i, (positive, truth) in enumerate(CELLS):
        verdict = "agree" if positive == truth else ("disagree" if i % 2 else "corrected")
        lines.append(
            f"s{i},Edema,{verdict},{'true' if verdict == 'corrected' and truth else 'false' if verdict == 'corrected' else ''},,rad-{i % 2}"
        )
    lines.append("s0,nodule,accepted,,0,rad-0")
    (tmp_path / "feedback.csv").write_text("\n".join(lines) + "\n")
    assert main(["models", "feedback", str(tmp_path / "feedback.csv"), "--data-dir", str(data)]) == 0
    return data


def test_feedback_lands_in_the_lake_with_who_and_when(lake):
    objects = sorted((lake / "telemetry" / "feedback" / "source=csv").rglob("*.ndjson.gz"))
    assert len(objects) == 2  # one submission per reader
    rows = [json.loads(line) for f in objects for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert len(rows) == 11 and {r["reader"] for r in rows} == {"rad-0", "rad-1"}
    assert all(r["time"] and r["model_version"] == "1" for r in rows if r["kind"] == "finding")
    truth = {r["study_id"]: r["present"] for r in rows if r["kind"] == "finding"}
    assert truth == {f"s{i}": t for i, (_, t) in enumerate(CELLS)}
    (box,) = [r for r in rows if r["kind"] == "box"]
    assert (box["label"], box["present"], box["model_name"]) == ("nodule", True, None)


def test_metrics_match_the_hand_computed_example(lake):
    """Sensitivity 4/5 = 0.8, Wilson 95%: (4 + 1.9208 -/+ 1.96*sqrt(4*1/5 + 0.9604)) / (5 + 3.8416) = 0.3755 .. 0.9638.
    Specificity 3/5 = 0.6: (3 + 1.9208 -/+ 1.96*sqrt(3*2/5 + 0.9604)) / 8.8416 = 0.2307 .. 0.8824.
    PPV 4/6 = 0.6667: (4 + 1.9208 -/+ 1.96*sqrt(4*2/6 + 0.9604)) / 9.8416 = 0.3000 .. 0.9032."""
    rows = DuckDBQueryRunner(lake / "telemetry").run("model_performance").as_dicts()
    overall = next(r for r in rows if r["site"] == "all")
    assert (overall["tp"], overall["fn"], overall["tn"], overall["fp"], overall["studies"]) == (4, 1, 3, 2, 10)
    assert (overall["sensitivity"], overall["sensitivity_low"], overall["sensitivity_high"]) == pytest.approx(
        (0.8, 0.3755, 0.9638), abs=1e-4
    )
    assert (overall["specificity"], overall["specificity_low"], overall["specificity_high"]) == pytest.approx(
        (0.6, 0.2307, 0.8824), abs=1e-4
    )
    assert (overall["ppv"], overall["ppv_low"], overall["ppv_high"]) == pytest.approx((0.6667, 0.3000, 0.9032), abs=1e-4)
    by_site = {r["site"]: r for r in rows if r["site"] != "all"}
    assert set(by_site) == {"site-a", "site-b"} and by_site["site-a"]["scanner"] == "Acme DR1"
    assert (by_site["site-a"]["tp"], by_site["site-a"]["fn"]) == (4, 1)  # s0-s4
    assert (by_site["site-b"]["tn"], by_site["site-b"]["fp"], by_site["site-b"]["sensitivity"]) == (3, 2, None)


def test_calibration_bins_predictions_against_the_truth(lake):
    bins = {r["bin_low"]: r for r in DuckDBQueryRunner(lake / "telemetry").run("model_calibration").as_dicts()}
    # 0.85 predicted on 6 studies of which 4 present; 0.15 on 4 of which 1 present.
    assert set(bins) == {0.1, 0.8}
    assert (bins[0.8]["studies"], bins[0.8]["mean_predicted"], bins[0.8]["observed"]) == (6, 0.85, pytest.approx(0.6667, abs=1e-4))
    assert (bins[0.1]["studies"], bins[0.1]["observed"]) == (4, 0.25)
    assert bins[0.1]["observed_low"] < 0.25 < bins[0.1]["observed_high"]


def test_feedback_that_does_not_fit_the_result_is_refused(tmp_path):
    store = LocalObjectStore(tmp_path)
    put_study(store, 0, True, datetime.now(UTC))
    for item, message in [
        (FeedbackItem(study_id="nope", label="Edema", verdict="agree"), "has no result"),
        (FeedbackItem(study_id="s0", label="Cardiomegaly", verdict="agree"), "use corrected"),
        (FeedbackItem(study_id="s0", label="Edema", verdict="corrected"), "says present"),
        (FeedbackItem(study_id="s0", label="nodule", verdict="rejected", box_index=3), "box_index"),
    ]:
        with pytest.raises(FeedbackRefused, match=message):
            record_feedback(store, [item], reader="rad-1", source="console")
    with pytest.raises(FeedbackRefused, match="pseudonymous"):
        record_feedback(store, [FeedbackItem(study_id="s0", label="Edema", verdict="agree")], reader="Dr. Jane Smith", source="console")
    assert not (tmp_path / "telemetry" / "feedback").exists()


def fhir_report(study_id: str, codes: list[str], status: str = "final") -> dict:
    return {
        "resourceType": "DiagnosticReport",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic Imaging Report"}]},
        "identifier": [{"system": "urn:radstream:study-id", "value": study_id}, {"system": "urn:ris:accession", "value": "ACC-1"}],
        "resultsInterpreter": [{"reference": "Practitioner/dr-jane-smith", "display": "Dr Jane Smith"}],
        "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes],
    }


def test_a_final_fhir_report_becomes_feedback(lake, tmp_path):
    """s0: the model said Edema, the report concludes pulmonary edema (SCT 19242006): agree, present. s5: the model said
    no Edema, the report concludes it: disagree, present. s6: a report with another conclusion: Edema absent, agree."""
    for study_id, codes in (("s0", ["19242006"]), ("s5", ["19242006", "8186001"]), ("s6", ["8186001"])):
        (tmp_path / f"{study_id}.json").write_text(json.dumps(fhir_report(study_id, codes)))
        assert main(["models", "feedback", str(tmp_path / f"{study_id}.json"), "--data-dir", str(lake)]) == 0
    objects = sorted((lake / "telemetry" / "feedback" / "source=fhir").rglob("*.ndjson.gz"))
    raw = b"".join(gzip.decompress(f.read_bytes()) for f in objects)
    rows = {json.loads(line)["study_id"]: json.loads(line) for line in raw.splitlines()}
    assert {k: (r["verdict"], r["present"]) for k, r in rows.items()} == {
        "s0": ("agree", True),
        "s5": ("disagree", True),
        "s6": ("agree", False),
    }
    assert rows["s0"]["reader"].startswith("reader-") and b"Jane" not in raw and b"Practitioner" not in raw


def test_a_report_that_is_not_final_or_names_no_study_is_refused(lake, tmp_path, capsys):
    cases = [
        (fhir_report("s0", ["19242006"], status="preliminary"), "only a final report"),
        ({**fhir_report("s0", ["19242006"]), "identifier": []}, "urn:radstream:study-id"),
        ({**fhir_report("s0", []), "conclusionCode": []}, "no conclusionCode"),
        ({"resourceType": "DiagnosticReport", "status": "final"}, "not a FHIR DiagnosticReport"),
    ]
    for i, (report, message) in enumerate(cases):
        (tmp_path / f"r{i}.json").write_text(json.dumps(report))
        assert main(["models", "feedback", str(tmp_path / f"r{i}.json"), "--data-dir", str(lake)]) == 2
        assert message in capsys.readouterr().err
    assert not (lake / "telemetry" / "feedback" / "source=fhir").exists()


def test_box_verdicts_give_each_detector_version_its_accepted_share(lake):
    """s0's one box: accepted by the CSV, then rejected from the console; s1's accepted. The latest verdict per box
    counts: 1 accepted, 1 rejected; share 0.5, Wilson (1 + 1.9208 -/+ 1.96*sqrt(1*1/2 + 0.9604)) / 5.8416 = 0.0945 .. 0.9055."""
    store = LocalObjectStore(lake)
    later = datetime.now(UTC)
    record_feedback(
        store, [FeedbackItem(study_id="s1", label="nodule", verdict="accepted", box_index=0)], reader="rad-2", source="console", time=later
    )
    record_feedback(
        store, [FeedbackItem(study_id="s0", label="nodule", verdict="rejected", box_index=0)], reader="rad-2", source="console", time=later
    )
    (row,) = DuckDBQueryRunner(lake / "telemetry").run("box_acceptance").as_dicts()
    assert (row["label"], row["accepted"], row["rejected"], row["accepted_share"]) == ("nodule", 1, 1, 0.5)
    assert (row["accepted_share_low"], row["accepted_share_high"]) == pytest.approx((0.0945, 0.9055), abs=1e-4)


def oru(study_id: str, observations: list[tuple[str, str]], status: str = "F", namespace: str = "RADSTREAM") -> str:
    """An ORU^R01 final report: OBR-3 the study, OBR-25 its status, OBR-32 the interpreter; one CWE OBX per finding
    (SNOMED CT code, Present 52101004 / Absent 272519000). PID carries a name that must go no further."""
    obr = ["OBR", "1", "ACC-1", f"{study_id}^{namespace}", "18748-4^Diagnostic Imaging Report^LN"] + [""] * 20 + [status]
    obr += [""] * (32 - len(obr) + 1)
    obr[32] = "12345&SMITH&JANE"
    segments = [
        # Each message its own control id (MSH-10): a repeated id is the same message resent, recorded once.
        f"MSH|^~\\&|RIS|HOSP|RADSTREAM|HOSP|20261208010000||ORU^R01|MSG-{study_id}-{status}|P|2.5.1",
        "PID|1||MRN-88888888^^^HOSP||DOE^JANE",
        "|".join(obr),
    ]
    for i, (code, evaluation) in enumerate(observations, start=1):
        value = {"present": "52101004^Present^SCT", "absent": "272519000^Absent^SCT"}[evaluation]
        segments.append(f"OBX|{i}|CWE|{code}^finding^SCT||{value}||||||F")
    return "\r".join(segments) + "\r"


def test_a_final_hl7_oru_report_becomes_feedback(lake, tmp_path):
    """s0 (model: Edema) read Edema present: agree. s6 (model: no Edema) read present: disagree. s7: absent, agree."""
    for study_id, evaluation in (("s0", "present"), ("s6", "present"), ("s7", "absent")):
        (tmp_path / f"{study_id}.hl7").write_text(oru(study_id, [("19242006", evaluation), ("8186001", "absent")]))
        assert main(["models", "feedback", str(tmp_path / f"{study_id}.hl7"), "--data-dir", str(lake)]) == 0
    objects = sorted((lake / "telemetry" / "feedback" / "source=hl7").rglob("*.ndjson.gz"))
    raw = b"".join(gzip.decompress(f.read_bytes()) for f in objects)
    rows = {json.loads(line)["study_id"]: json.loads(line) for line in raw.splitlines()}
    # Cardiomegaly is no finding of these results: ignored. One row per study, Edema.
    assert {k: (r["label"], r["verdict"], r["present"]) for k, r in rows.items()} == {
        "s0": ("Edema", "agree", True),
        "s6": ("Edema", "disagree", True),
        "s7": ("Edema", "agree", False),
    }
    assert rows["s0"]["reader"].startswith("reader-") and b"SMITH" not in raw and b"DOE" not in raw and b"MRN" not in raw


def test_an_hl7_report_that_is_not_final_or_not_ours_is_refused(lake, tmp_path, capsys):
    cases = [
        (oru("s0", [("19242006", "present")], status="P"), "only a final report"),
        (oru("s0", [("19242006", "present")], namespace="OTHER"), "OBR-3"),
        (oru("s0", [("8186001", "present")]), "no final OBX"),
        ("not hl7 at all", "not an HL7 v2 message"),
    ]
    for i, (text, message) in enumerate(cases):
        (tmp_path / f"r{i}.hl7").write_text(text)
        assert main(["models", "feedback", str(tmp_path / f"r{i}.hl7"), "--data-dir", str(lake)]) == 2
        assert message in capsys.readouterr().err
    assert not (lake / "telemetry" / "feedback" / "source=hl7").exists()
