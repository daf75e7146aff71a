"""Critical findings reach the RIS: the notify stage of template.yaml's workflow, run by the local runtime, sends one
HL7 v2.5.1 ORU^R01 per study and fired rule over MLLP to a real listener on loopback (synthetic/mllp_peer.py, strict
hl7apy validation), publishes a "Critical Finding" event, survives NAKs and dropped connections, dead-letters what it
cannot deliver (replayed by the CLI), and delivers exactly once across a kill of the notifier."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import dicom_bytes, encode, sidecar, write_study
from services.notify.hl7 import validate_strictly
from shared.contracts import StudyNotifications
from shared.settings import Settings
from synthetic.mllp_peer import MllpPeer

ROOT = Path(__file__).resolve().parents[2]


def effusion_study(root: Path, study_id: str, level: str = "stat", seed: int = 11) -> Path:
    """A phantom with every finding present: the classifier calls Pleural Effusion and Edema far over their thresholds."""
    rng = np.random.default_rng(seed)
    image = generate_phantom(rng, size=256, findings=["Pleural Effusion", "Edema", "Consolidation"]).image
    name, data = encode(image, 0)
    return write_study(root / study_id, sidecar(study_id, name, rng, data) | {"priority": level}, name, data)


def quiet_study(root: Path, study_id: str) -> Path:
    rng = np.random.default_rng(2)
    image = generate_phantom(rng, size=256, findings=[], lesions=0).image
    name, data = encode(image, 0)
    return write_study(root / study_id, sidecar(study_id, name, rng, data) | {"priority": "stat"}, name, data)


def ledger(data_dir: Path, study_id: str) -> StudyNotifications:
    return StudyNotifications.model_validate_json((data_dir / "results" / "results" / study_id / "notifications.json").read_text())


def events(data_dir: Path, kind: str = "Critical Finding") -> list[dict]:
    path = data_dir / "events" / "events.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["detail-type"] == kind] if path.exists() else []


def no_sleep(_: float) -> None:
    return None


def test_a_fired_rule_sends_one_valid_oru_and_one_event(tmp_path: Path) -> None:
    with MllpPeer() as peer:
        settings = Settings(data_dir=tmp_path / "data", notify_mllp_peer=peer.address)
        with LocalRuntime(settings, workers=1) as runtime:
            outcome = runtime.run_folder(effusion_study(tmp_path / "in", "crit-1"))
            quiet = runtime.run_folder(quiet_study(tmp_path / "in", "quiet-1"))
            again = runtime.run_folder(tmp_path / "in" / "crit-1")  # the same study run again: nothing sent twice
    assert outcome.status == quiet.status == again.status == "succeeded"
    record = ledger(settings.data_dir, "crit-1")
    import jsonschema

    from shared.contracts import schema_path

    raw = json.loads((settings.data_dir / "results" / "results" / "crit-1" / "notifications.json").read_text())
    jsonschema.validate(raw, json.loads(schema_path("notifications").read_text()))
    fired = sorted(n.rule for n in record.notifications)
    assert "pleural-effusion" in fired and record.priority == "stat"
    assert all(n.channels["hl7"].status == "delivered" and n.channels["hl7"].ack == "AA" for n in record.notifications)
    assert not (settings.data_dir / "results" / "results" / "quiet-1" / "notifications.json").exists()
    # Every message valid; one per study and rule, even after the study ran twice.
    assert all(r.valid for r in peer.received), [r.error for r in peer.received]
    assert sorted(r.control_id for r in peer.received) == sorted(n.message_id for n in record.notifications)
    for r in peer.received:
        validate_strictly(r.er7)
        segments = {line.split("|")[0]: line.split("|") for line in r.er7.split("\r") if line}
        assert segments["MSH"][8] == "ORU^R01^ORU_R01" and segments["MSH"][11] == "2.5.1"
        assert segments["OBR"][5] == "S"  # stat
        assert segments["PID"][3].startswith("anon-")  # the sidecar's pseudonymous id, never a name
        obx = [line.split("|") for line in r.er7.split("\r") if line.startswith("OBX|")]
        assert len(obx) == 5 and all(o[2] == "NM" and o[18].startswith("chest_xray_classifier-") for o in obx)
    published = events(settings.data_dir)
    assert sorted(e["detail"]["rule"] for e in published) == fired
    assert all(
        set(e["detail"]) == {"study_id", "message_id", "execution_id", "rule", "label", "probability", "threshold", "priority"}
        for e in published
    )


def test_dicom_source_sends_its_patient_id_and_accession_to_the_ris_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    image = generate_phantom(rng, size=256, findings=["Pleural Effusion", "Edema"]).image
    folder = tmp_path / "in" / "dcm-crit"
    folder.mkdir(parents=True)
    import pydicom
    import io

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes((image * 4095).astype(np.uint16), patient_name="DOE^JANE", accession_number="ACC-77")))
    ds.RequestedProcedurePriority = "STAT"
    ds.save_as(folder / "study.dcm")
    with MllpPeer() as peer:
        settings = Settings(data_dir=tmp_path / "data", notify_mllp_peer=peer.address)
        with LocalRuntime(settings, workers=1) as runtime:
            assert runtime.run_folder(folder).status == "succeeded"
    assert peer.received and all(r.valid for r in peer.received)
    pid = next(line for line in peer.received[0].er7.split("\r") if line.startswith("PID|")).split("|")
    obr = next(line for line in peer.received[0].er7.split("\r") if line.startswith("OBR|")).split("|")
    assert pid[3].startswith("MRN-88888888^") and "DOE" not in peer.received[0].er7
    assert obr[5] == "S" and obr[18] == "ACC-77"
    # The identifiers went to the RIS and nowhere the pipeline writes for itself.
    written = (settings.data_dir / "results" / "results" / "dcm-crit" / "notifications.json").read_text()
    assert "MRN-" not in written and "ACC-77" not in written
    assert "MRN-" not in (settings.data_dir / "events" / "events.jsonl").read_text()
    # The FHIR bundle carries a Communication per fired rule, about the DiagnosticReport, valid to fhir.resources.
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.communication import Communication

    bundle = json.loads((settings.data_dir / "results" / "results" / "dcm-crit" / "report.fhir.json").read_text())
    Bundle.model_validate(bundle)
    report_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    communications = [
        Communication.model_validate(e["resource"]) for e in bundle["entry"] if e["resource"]["resourceType"] == "Communication"
    ]
    fired = ledger(settings.data_dir, "dcm-crit").notifications
    assert len(communications) == len(fired) >= 1
    assert all(c.about[0].reference == report_url and c.priority == "stat" and c.status == "completed" for c in communications)
    assert {c.identifier[0].value for c in communications} == {f"urn:radstream:notification:{n.message_id}" for n in fired}


@pytest.mark.parametrize("answer", ["AR", "drop"])
def test_a_nak_or_dropped_connection_is_retried_and_delivered_once(tmp_path: Path, answer: str) -> None:
    with MllpPeer(script=[answer]) as peer:
        settings = Settings(data_dir=tmp_path / "data", notify_mllp_peer=peer.address)
        with LocalRuntime(settings, workers=1, sleep=no_sleep) as runtime:
            assert runtime.run_folder(effusion_study(tmp_path / "in", "crit-r")).status == "succeeded"
    record = ledger(settings.data_dir, "crit-r")
    assert all(n.channels["hl7"].status == "delivered" for n in record.notifications)
    assert sorted(peer.filed) == sorted(n.message_id for n in record.notifications)
    assert any(n.channels["hl7"].attempts == 2 for n in record.notifications)
    assert any(e.what == "failed" for n in record.notifications for e in n.trail)


def test_ae_is_a_dead_letter_that_the_cli_replays(tmp_path: Path) -> None:
    with MllpPeer(default="AE") as refusing:
        settings = Settings(data_dir=tmp_path / "data", notify_mllp_peer=refusing.address)
        with LocalRuntime(settings, workers=1, sleep=no_sleep) as runtime:
            outcome = runtime.run_folder(effusion_study(tmp_path / "in", "crit-ae"))
    assert outcome.status == "succeeded"  # a notification never costs the result
    assert (settings.data_dir / "results" / "results" / "crit-ae" / "result.json").exists()
    record = ledger(settings.data_dir, "crit-ae")
    assert record.notifications and all(n.channels["hl7"].status == "dead_letter" for n in record.notifications)
    assert not refusing.filed
    with MllpPeer() as peer:
        env = {**os.environ, "NOTIFY_MLLP_PEER": peer.address}
        done = subprocess.run(
            [sys.executable, "-m", "radstream.cli", "notify", "--replay", "--data-dir", str(settings.data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    record = ledger(settings.data_dir, "crit-ae")
    assert all(n.channels["hl7"].status == "delivered" for n in record.notifications)
    assert sorted(peer.filed) == sorted(n.message_id for n in record.notifications)
    assert len(peer.received) == len(record.notifications)


def test_exactly_once_across_a_kill_of_the_notifier(tmp_path: Path) -> None:
    """The peer holds its ACK to the first ORU; the run is killed (SIGKILL) while it waits; `radstream resume` delivers
    what is pending. The RIS files each study and rule once: the repeat carries the same MSH-10."""
    folder = effusion_study(tmp_path / "in", "crit-kill")
    data_dir = tmp_path / "data"
    with MllpPeer(script=["hold"]) as peer:
        env = {**os.environ, "NOTIFY_MLLP_PEER": peer.address}
        run = subprocess.Popen(
            [sys.executable, "-m", "radstream.cli", "run", str(folder), "--data-dir", str(data_dir), "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert peer.got_one.wait(120), "the notifier never reached the RIS"
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        peer.release.set()
        time.sleep(0)  # the held connection's peer is gone: its ACK goes nowhere
        record = ledger(data_dir, "crit-kill")
        assert any(c.status == "pending" for n in record.notifications for c in n.channels.values())
        done = subprocess.run(
            [sys.executable, "-m", "radstream.cli", "resume", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    record = ledger(data_dir, "crit-kill")
    assert all(c.status == "delivered" for n in record.notifications for c in n.channels.values())
    ids = sorted(n.message_id for n in record.notifications)
    assert sorted(peer.filed) == ids  # filed once per study and rule
    assert sorted({r.control_id for r in peer.received}) == ids  # and no message id beyond those
    assert all(r.valid for r in peer.received)
    # Only the message in flight at the kill was received twice (same MSH-10, dropped by the RIS); every other once.
    counts = {i: sum(r.control_id == i for r in peer.received) for i in ids}
    assert sorted(counts.values()) == [1] * (len(ids) - 1) + [2], counts
    assert len(events(data_dir)) == len(ids)


def test_the_result_the_json_and_the_table_say_which_rule_fired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from radstream.cli import main

    studies = tmp_path / "in"
    effusion_study(studies, "crit-says")
    quiet_study(studies, "quiet-says")
    data_dir = tmp_path / "data"
    assert main(["run", str(studies), "--data-dir", str(data_dir), "--json", "--quiet", "--workers", "1"]) == 0
    document = json.loads(capsys.readouterr().out)
    summary = {s["study_id"]: s for s in document["studies"]}
    record = ledger(data_dir, "crit-says")
    result = json.loads((data_dir / "results" / "results" / "crit-says" / "result.json").read_text())
    fired = result["critical_findings"]
    assert {c["rule"] for c in fired} == {n.rule for n in record.notifications} >= {"pleural-effusion"}
    assert {c["rule"]: c["message_id"] for c in fired} == {n.rule: n.message_id for n in record.notifications}
    assert summary["crit-says"]["critical_findings"] == [c["rule"] for c in fired]
    quiet = json.loads((data_dir / "results" / "results" / "quiet-says" / "result.json").read_text())
    assert quiet["critical_findings"] == [] and summary["quiet-says"]["critical_findings"] == []  # evaluated: none fired
    from rich.console import Console

    from radstream.cli import print_table
    from radstream.local_aws import StudyOutcome

    console = Console(record=True, width=240)
    print_table(console, [StudyOutcome(**summary["crit-says"]), StudyOutcome(**summary["quiet-says"])], document["totals"])
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if "-says" in line}
    assert f"(critical: {', '.join(c['rule'] for c in fired)})" in rows["crit-says"] and "critical" not in rows["quiet-says"]


def test_the_default_rules_page_at_the_cards_high_specificity_points() -> None:
    """Each default rule holds its finding to the live classifier version's high-specificity point (validation
    specificity >= 0.95), never below the finding's Youden threshold: the point comes with the version's findings
    (metrics.json, through the model repository), so a retrained or newly activated version moves the rules with it."""
    from services.notify.rules import held_to, load_rules
    from shared.contracts import Finding
    from shared.model_repository import ModelRepository

    model = ROOT / "services" / "triton" / "model_repository" / "chest_xray_classifier"
    youden = json.loads((model / "thresholds.json").read_text())
    section = json.loads((model / "metrics.json").read_text())["high_specificity"]
    assert section["target_specificity"] >= 0.95 and section["chosen_on"] == "validation"
    points = section["points"]
    assert all(p["validation"]["specificity"] >= 0.95 for p in points.values())
    spec = ModelRepository(Settings().model_repository).models["chest_xray_classifier"]
    assert spec.high_specificity == {label: p["threshold"] for label, p in points.items()}
    for rule in load_rules():
        assert rule.threshold == "high-specificity", rule.name
        finding = Finding(
            label=rule.label,
            probability=0.5,
            threshold=spec.thresholds[rule.label],
            positive=True,
            high_specificity_threshold=spec.high_specificity[rule.label],
        )
        assert held_to(rule, finding) == max(youden[rule.label], points[rule.label]["threshold"]), rule.name
        assert f"| {rule.label} | {points[rule.label]['threshold']:.4f} |" in (model / "MODEL_CARD.md").read_text()
