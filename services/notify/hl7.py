"""HL7 v2.5.1 ORU^R01 for a critical finding, built and validated strictly by hl7apy, and sent over MLLP.

What a RIS expects (IHE Radiology "Reporting Workflow" practice): MSH-10 the message control id (stable across
retries, so the RIS can drop a repeat), PID-3 the patient id, OBR-3 the filler's id (our study id), OBR-5 the
priority (HL7 table 0027: S, A, R), OBR-18 the accession number, OBR-25 P (preliminary: an AI's, not a
radiologist's), and one OBX per finding with its probability (NM), the threshold (OBX-7), A for abnormal (OBX-8)
and the AI's identity, model name and version (OBX-18, Equipment Instance Identifier).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from shared.contracts import CriticalNotification, Finding, ModelRef
from shared.errors import NotificationRejected, NotificationUnavailable
from shared.priority import to_hl7

START, END = b"\x0b", b"\x1c\x0d"  # MLLP framing: <VT> message <FS><CR>
SENDING_APPLICATION = "RADSTREAM"
# LOINC 36643-5 "XR Chest 2V" is what RIS order catalogues use for a chest X-ray; the AI reads one view at a time.
CHEST_XRAY = "36643-5^XR Chest 2V^LN"


@dataclass(frozen=True)
class Patient:
    """What the ORU carries about the patient: from the source DICOM (docs/phi.md allows it in what goes back to the
    hospital), or the sidecar's pseudonymous id. Never a name: PID-5 says "pseudonym" (XPN-7 = S)."""

    patient_id: str | None
    accession: str | None
    authority: str


def _ts(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


def _text(value: str, limit: int = 199) -> str:
    """HL7 delimiters out of a value (|^~\\&), and the field's length held."""
    return "".join(" " if c in "|^~\\&\r\n" else c for c in value)[:limit]


def build_oru(
    study_id: str,
    notification: CriticalNotification,
    findings: list[Finding],
    classifier: ModelRef | None,
    patient: Patient,
    at: datetime,
) -> str:
    """The ORU^R01 (ER7, segments joined by CR), validated strictly; raises hl7apy's errors when it would not be valid."""
    m = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = SENDING_APPLICATION
    m.msh.msh_4 = SENDING_APPLICATION
    m.msh.msh_5 = "RIS"
    m.msh.msh_7 = _ts(at)
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = notification.message_id
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.5.1"
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_3 = f"{_text(patient.patient_id or study_id, 20)}^^^{_text(patient.authority, 20)}^PI"
    pid.pid_5 = "^^^^^^S"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = f"{_text(study_id, 60)}^{SENDING_APPLICATION}"
    obr.obr_4 = CHEST_XRAY
    obr.obr_5 = to_hl7(notification.priority)
    obr.obr_7 = _ts(notification.fired_at)
    if patient.accession:
        obr.obr_18 = _text(patient.accession, 16)
    obr.obr_22 = _ts(at)
    obr.obr_25 = "P"
    order.add_segment("NTE").nte_3 = _text(f"AI critical-finding notification, rule {notification.rule}; not for clinical use")
    identity = (
        f"{_text(classifier.name, 60)}-{_text(str(classifier.version), 10)}^{SENDING_APPLICATION}" if classifier else SENDING_APPLICATION
    )
    for index, finding in enumerate(sorted(findings, key=lambda f: (f.label != notification.label, -f.probability)), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(index)
        obx.obx_2 = "NM"
        code = _text(finding.label.upper().replace(" ", "_"), 20)
        obx.obx_3 = f"{code}^{_text(finding.label, 60)}^{SENDING_APPLICATION}"
        obx.obx_4 = "1"
        obx.obx_5 = f"{finding.probability:.4f}"
        obx.obx_7 = f"<{finding.threshold:.4f}"
        obx.obx_8 = "A" if finding.probability >= finding.threshold else "N"
        obx.obx_11 = "P"
        obx.obx_14 = _ts(notification.fired_at)
        obx.obx_18 = identity
    m.validate()
    return str(m.to_er7())


def validate_strictly(er7: str) -> None:
    """Parse and validate a message as hl7apy's strict level does (the tests' peers apply it to every ORU)."""
    parse_message(er7.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def send(peer: str, er7: str, control_id: str, timeout_s: float) -> str:
    """Send one message over MLLP and read its ACK: AA is returned; AE raises NotificationRejected (the message itself is
    wrong), AR and every connection problem NotificationUnavailable (the workflow's Retry sends it again)."""
    host, _, port = peer.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.sendall(START + er7.encode() + END)
            reply = b""
            while END not in reply:
                chunk = conn.recv(65536)
                if not chunk:
                    raise NotificationUnavailable(f"RIS {peer} closed the connection before its ACK to {control_id}")
                reply += chunk
    except (OSError, ValueError) as e:
        raise NotificationUnavailable(f"RIS {peer} not reached or lost ({type(e).__name__}) sending {control_id}") from e
    body = reply[reply.find(START) + 1 : reply.find(END)].decode(errors="replace")
    try:
        ack = parse_message(body.replace("\n", "\r"), find_groups=False)
        code, acked = str(ack.msa.msa_1.value), str(ack.msa.msa_2.value)
    except Exception as e:
        raise NotificationRejected(f"RIS {peer} answered {control_id} with something that is not an HL7 ACK") from e
    if acked != control_id:
        raise NotificationUnavailable(f"RIS {peer} acknowledged {acked!r}, not {control_id}")
    if code in ("AA", "CA"):
        return code
    if code in ("AR", "CR"):
        raise NotificationUnavailable(f"RIS {peer} rejected {control_id} for now (ACK {code})")
    raise NotificationRejected(f"RIS {peer} refused {control_id} (ACK {code})")
