"""The notify service on its own: the rules file, the ORU (hl7apy strict validation), MLLP delivery against a real
listener on loopback (AA, AE, AR, a dropped connection, nobody listening), and the record written before sending."""

from __future__ import annotations

import json
import socket
from datetime import datetime, UTC
from pathlib import Path

import pytest
from hl7apy.exceptions import ValidationError

from services.notify import hl7
from services.notify.domain import message_id, notify
from services.notify.rules import DEFAULT_RULES, Rule, fired, load_rules
from shared.contracts import (
    CriticalNotification,
    Finding,
    InputDigest,
    ModelRef,
    NotificationChannel,
    ObjectRef,
    StudyNotifications,
    StudyResult,
    notifications_key,
)
from shared.errors import ConfigurationError, NotificationRejected, NotificationUnavailable, StorageUnavailable
from shared.messages import NotifyRequest, StoredResult, StudyImage, ValidatedStudy
from shared.settings import Settings
from shared.storage import LocalObjectStore
from synthetic.mllp_peer import MllpPeer

FINDINGS = [
    Finding(label="Pleural Effusion", probability=0.93, threshold=0.3021, positive=True),
    Finding(label="Edema", probability=0.12, threshold=0.2752, positive=False),
]
CLASSIFIER = ModelRef(name="chest_xray_classifier", version="1", provenance="reference")


def notification(rule: str = "pleural-effusion", priority: str = "stat") -> CriticalNotification:
    now = datetime.now(UTC)
    return CriticalNotification(
        rule=rule,
        label="Pleural Effusion",
        probability=0.93,
        threshold=0.3021,
        priority=priority,  # type: ignore[arg-type]
        message_id=message_id("study-1", "exec-1", rule),
        execution_id="exec-1",
        fired_at=now,
        channels={"hl7": NotificationChannel()},
    )


def oru(priority: str = "stat") -> str:
    return hl7.build_oru(
        "study-1", notification(priority=priority), FINDINGS, CLASSIFIER, hl7.Patient("MRN-1", "ACC-1", "HOSP"), datetime.now(UTC)
    )


def test_the_default_rules_load_and_fire_on_their_operating_point() -> None:
    rules = load_rules()
    assert {r.label for r in rules} <= {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
    hits = fired(rules, FINDINGS, "stat")
    assert [(r.name, t) for r, _, t in hits] == [("pleural-effusion", 0.3021)]  # Edema is under its threshold
    consolidation = [Finding(label="Consolidation", probability=0.9, threshold=0.19, positive=True)]
    assert fired(rules, consolidation, "stat") and not fired(rules, consolidation, "routine")  # that rule: stat and urgent only
    assert fired([Rule(name="x", label="Edema", threshold=0.1)], FINDINGS, "routine")


def test_a_high_specificity_rule_follows_the_model_version_of_its_finding() -> None:
    """threshold "high-specificity": the card point the finding carries (its model version's), never below the finding's own
    threshold; without a point, the finding's own threshold. A new version with another point moves the rule with it."""
    rule = Rule(name="effusion", label="Pleural Effusion", threshold="high-specificity")

    def finding(probability: float, point: float | None, own: float = 0.3) -> list[Finding]:
        return [
            Finding(
                label="Pleural Effusion",
                probability=probability,
                threshold=own,
                positive=probability >= own,
                high_specificity_threshold=point,
            )
        ]

    assert [t for _, _, t in fired([rule], finding(0.6, 0.5), "routine")] == [0.5]
    assert not fired([rule], finding(0.45, 0.5), "routine")  # positive at 0.3, but under version 1's card point
    assert [t for _, _, t in fired([rule], finding(0.45, 0.4), "routine")] == [0.4]  # version 2's card: 0.4
    assert [t for _, _, t in fired([rule], finding(0.35, 0.1), "routine")] == [0.3]  # never below the finding's own
    assert [t for _, _, t in fired([rule], finding(0.35, None), "routine")] == [0.3]  # no point in the card


def test_a_rules_file_that_does_not_hold_is_refused(tmp_path: Path) -> None:
    rules = json.loads(DEFAULT_RULES.read_text())
    rules["rules"].append(rules["rules"][0])
    (tmp_path / "twice.json").write_text(json.dumps(rules))
    (tmp_path / "bad.json").write_text('{"rules": [{"name": "x", "label": "Edema", "threshold": 2}]}')
    (tmp_path / "word.json").write_text('{"rules": [{"name": "x", "label": "Edema", "threshold": "high"}]}')
    for name in ("twice.json", "bad.json", "word.json", "absent.json"):
        with pytest.raises(ConfigurationError):
            load_rules(tmp_path / name)


def test_a_rules_file_is_parsed_once_per_version_and_an_edit_takes_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: notify parsed the rules file for every study; now once, and again only when the file changes."""
    import services.notify.rules as rules_module

    path = tmp_path / "rules.json"
    path.write_text('{"rules": [{"name": "edema", "label": "Edema", "threshold": 0.5}]}')
    parsed = []
    original = rules_module._parse_rules
    monkeypatch.setattr(rules_module, "_parse_rules", lambda source: parsed.append(source) or original(source))
    assert [r.threshold for r in load_rules(path)] == [0.5]
    assert [r.threshold for r in load_rules(path)] == [0.5]
    assert len(parsed) == 1
    path.write_text('{"rules": [{"name": "edema", "label": "Edema", "threshold": 0.25}]}')  # another size: read again
    assert [r.threshold for r in load_rules(path)] == [0.25] and len(parsed) == 2
    path.unlink()
    with pytest.raises(ConfigurationError):
        load_rules(path)


@pytest.mark.parametrize("priority,obr5", [("stat", "S"), ("urgent", "A"), ("routine", "R")])
def test_the_oru_is_strictly_valid_and_carries_what_a_ris_keys_on(priority: str, obr5: str) -> None:
    er7 = oru(priority)
    hl7.validate_strictly(er7)
    segments = [line.split("|") for line in er7.split("\r") if line]
    by_name = {s[0]: s for s in segments}
    assert [s[0] for s in segments] == ["MSH", "PID", "OBR", "NTE", "OBX", "OBX"]
    assert by_name["MSH"][9] == message_id("study-1", "exec-1", "pleural-effusion") and len(by_name["MSH"][9]) == 20
    assert by_name["PID"][3] == "MRN-1^^^HOSP^PI" and by_name["PID"][5] == "^^^^^^S"
    assert by_name["OBR"][5] == obr5 and by_name["OBR"][18] == "ACC-1" and by_name["OBR"][25] == "P"
    obx = [s for s in segments if s[0] == "OBX"]
    assert obx[0][3].startswith("PLEURAL_EFFUSION^") and obx[0][5] == "0.9300" and obx[0][8] == "A"  # the rule's finding first
    assert obx[1][8] == "N" and all(o[18] == "chest_xray_classifier-1^RADSTREAM" for o in obx)


def test_strict_validation_refuses_a_broken_message() -> None:
    """The check the peers apply is real: an ORU without its control id (MSH-10, required) does not pass."""
    fields = oru().split("\r")[0].split("|")
    fields[9] = ""
    broken = "\r".join(["|".join(fields), *oru().split("\r")[1:]])
    with pytest.raises(ValidationError):
        hl7.validate_strictly(broken)


@pytest.mark.parametrize(
    "answer,raised", [("ack", None), ("AE", NotificationRejected), ("AR", NotificationUnavailable), ("drop", NotificationUnavailable)]
)
def test_send_handles_each_answer(answer: str, raised: type[Exception] | None) -> None:
    er7 = oru()
    control = message_id("study-1", "exec-1", "pleural-effusion")
    with MllpPeer(default=answer) as peer:
        if raised is None:
            assert hl7.send(peer.address, er7, control, 5.0) == "AA"
            assert list(peer.filed) == [control]
        else:
            with pytest.raises(raised):
                hl7.send(peer.address, er7, control, 5.0)
        assert len(peer.received) == 1 and peer.received[0].valid


def test_nobody_listening_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotificationUnavailable):
        hl7.send(f"127.0.0.1:{port}", oru(), "X", 2.0)


class FlakyEvents:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[dict] = []

    def publish(self, detail_type: str, detail: dict) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("event bus throttled")
        self.published.append(detail)


def stored_study(
    store: LocalObjectStore, study_id: str, priority: str, timings_ms: dict[str, float]
) -> tuple[StudyResult, bytes, NotifyRequest]:
    """A study as StoreResults leaves it for the notify stage: its result.json (as the store writes it), its sidecar
    naming only a pseudonym, and the stage's request from the workflow state."""
    study_result = StudyResult(
        study_id=study_id,
        input=InputDigest(
            image=ObjectRef(bucket="images", key=f"incoming/{study_id}/image.png"), sha256="0" * 64, size_bytes=1, width=1, height=1
        ),
        modality="DX",
        view_position="PA",
        priority=priority,
        execution_id="exec-1",
        completed_at=datetime.now(UTC),
        models={"chest_xray_classifier": CLASSIFIER},
        findings=FINDINGS,
        detections=[],
        report=None,
        timings_ms=timings_ms,
    )
    written = study_result.model_dump_json(indent=2).encode()
    ref = ObjectRef(bucket="results", key=f"results/{study_id}/result.json")
    store.put_bytes("results", ref.key, written)
    store.put_bytes("images", f"incoming/{study_id}/study.json", json.dumps({"patient": {"pseudo_id": f"anon-{study_id}"}}).encode())
    study = ValidatedStudy(
        study_id=study_id,
        metadata=ObjectRef(bucket="images", key=f"incoming/{study_id}/study.json"),
        image=StudyImage(bucket="images", key=f"incoming/{study_id}/image.png", format="png", sha256="0" * 64, size_bytes=1),
        view_position="PA",
        modality="DX",
        priority=priority,
    )
    request = NotifyRequest(study=study, stored=StoredResult(study_id=study_id, result=ref, positive_findings=[]), execution_id="exec-1")
    return study_result, written, request


def test_the_record_is_written_before_sending_and_a_retry_sends_only_what_is_pending(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    _, _, request = stored_study(store, "study-1", "stat", {})
    events = FlakyEvents(failures=1)
    with MllpPeer() as peer:
        settings = Settings(data_dir=tmp_path, notify_mllp_peer=peer.address)
        with pytest.raises(StorageUnavailable):
            notify(request, store, events, settings)
        record = StudyNotifications.model_validate_json(store.get_bytes("results", notifications_key("study-1")))
        channels = record.notifications[0].channels
        assert channels["hl7"].status == "delivered" and channels["event"].status == "pending"  # one went, one waits
        notified = notify(request.model_copy(update={"execution_id": "exec-2"}), store, events, settings)  # the workflow's Retry
        assert notified.delivered == ["event:pleural-effusion"] and len(events.published) == 1
        assert len(peer.received) == 1  # the ORU was not sent again
    record = StudyNotifications.model_validate_json(store.get_bytes("results", notifications_key("study-1")))
    assert record.notifications[0].message_id == message_id("study-1", "exec-1", "pleural-effusion")  # the first execution's id
    assert events.published[0]["message_id"] == record.notifications[0].message_id


def test_the_result_says_which_rules_fired_and_nothing_else_of_it_changes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    study_result, written, request = stored_study(store, "study-2", "urgent", {"study": 1.25})
    assert json.loads(written)["critical_findings"] is None, "StoreResults leaves it to the notify stage: not evaluated"
    ref = request.stored.result
    notify(request, store, FlakyEvents(failures=0), Settings(data_dir=tmp_path))
    after = store.get_bytes("results", ref.key)
    record = StudyNotifications.model_validate_json(store.get_bytes("results", notifications_key("study-2")))
    section = json.loads(after)["critical_findings"]
    assert [c["rule"] for c in section] == ["pleural-effusion"]  # Edema stays under its threshold
    assert section[0]["message_id"] == record.notifications[0].message_id
    assert section[0]["probability"] == 0.93 and section[0]["threshold"] == 0.3021
    cut = written.index(b'"critical_findings"')
    assert after[:cut] == written[:cut], "every field StoreResults wrote is byte-for-byte as it was"
    assert StudyResult.model_validate_json(after).model_copy(update={"critical_findings": None}) == study_result
    import jsonschema

    from shared.contracts import schema_path

    jsonschema.validate(json.loads(after), json.loads(schema_path("result").read_text()))
    # The workflow's Retry (or a re-run of the stage) finds the result already saying so and leaves the file alone.
    before = (tmp_path / "results" / ref.key).stat().st_mtime_ns
    notify(request.model_copy(update={"execution_id": "exec-2"}), store, FlakyEvents(failures=0), Settings(data_dir=tmp_path))
    assert store.get_bytes("results", ref.key) == after and (tmp_path / "results" / ref.key).stat().st_mtime_ns == before
