"""Export stage: a DICOM study's result, DICOM-native and FHIR, addressed back to the hospital.

Inputs: the workflow state's validated study and stored result (object keys only); the result itself
(results/<study_id>/result.json) and the source DICOM's header (images bucket, pixels not read for the SR, the same
bytes validate checked: sha256), cleaned by services/export/header.py (each copied value valid for its VR).
Outputs, all under results/<study_id>/:
- report.sr.dcm: a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom): the image library
  (TID 1600, built here from what the header really has), one TID 1501 group per classifier finding (a qualitative
  evaluation Present/Absent, the certainty and the operating point), one TID 1410 group per detector box (an
  image-region SCOORD POLYLINE in the source image's pixels, referencing its SOP instance, with the score), the
  draft report text in the report's Qualitative Evaluations container, and each group's algorithm (TID 4019).
  Every concept is coded from services/export/codes.py, the table the FHIR bundle uses too. Series description and
  the text both say "not for clinical use".
- report.overlay.dcm: the Secondary Capture with the boxes burned in (services/export/overlay.py).
- report.fhir.json: a FHIR R4 collection Bundle (validated with fhir.resources' R4B models, identical for these
  resources): the DiagnosticReport (the SR in presentedForm), one Observation per finding and per box, a Device per
  model, the Patient and the ImagingStudy; urn:uuid fullUrls (uuid5 of study, execution and entry), declared
  profiles; mapped as the "DICOM SR to FHIR Resource Mapping" IG maps TID 1500 (docs/gateway.md says where simplified).
- exports.json: the study's export status (built, or skipped with why).
These objects carry the patient module by design (docs/phi.md); the stage returns only their keys. An error here
never costs the study its result: the workflow's Catch dead-letters the build (services/export/deliver.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import uuid
from datetime import UTC
from typing import Any

from services.export import codes
from services.export.header import addressed_header
from services.export.overlay import build_overlay, overlay_bytes
from services.export.status import write_status
from shared.contracts import QUALITY_FLAGS, CriticalNotification, ObjectRef, StudyNotifications, StudyResult, notifications_key
from shared.errors import InvalidImage, ObjectNotFound, PermanentError
from shared.messages import ExportedResult, ExportRequest
from shared.observability import logger
from shared.storage import ObjectStore, get_validated_bytes

NOT_FOR_CLINICAL_USE = "AI-generated draft, not for clinical use"
MANUFACTURER = "RadStream"
SR_SERIES_NUMBER = 9901
# The namespace of the bundle's urn:uuid fullUrls: uuid5 of study, execution and entry, so a retried export writes the
# same bundle and a re-run a new one (as the DICOM UIDs).
FHIR_NAMESPACE = uuid.UUID("5b0f4f9e-2d2a-5c1e-9a57-7a0d2f3c1288")
# RadStream's declared profiles of the R4 resources it writes (docs/gateway.md, "FHIR"): modelled on the HL7 DICOM SR to
# FHIR IG's Imaging Measurement Group and Report, which are FHIR R5 and so cannot be claimed by an R4 bundle.
PROFILE_BASE = "http://radstream.example/fhir/StructureDefinition/"
# The source DICOM's PatientID when its header names no issuer that is an OID: the hospital's own identifier, as written.
PATIENT_ID_SYSTEM = codes.PRIVATE_SYSTEM + ".1"
URI = "urn:ietf:rfc:3986"


def source_bytes(store: ObjectStore, result: StudyResult) -> bytes:
    """The source DICOM, the very bytes validate checked (sha256)."""
    return get_validated_bytes(store, result.input.image.bucket, result.input.image.key, result.input.sha256, result.study_id)


def source_header(data: bytes, study_id: str):
    """The source DICOM's header (pixels not read): the patient and study modules the SR and FHIR are addressed with."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as e:
        raise InvalidImage(f"DICOM header cannot be read ({type(e).__name__})", study_id=study_id) from e


def _uid(result: StudyResult, what: str) -> str:
    """Deterministic per study and execution: a retried export writes the same UIDs, a re-run new ones."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[result.study_id, result.execution_id, what])


def _algorithm(result: StudyResult, model_name: str):
    """TID 4019: the model's name and version (the name says the models are not for clinical use)."""
    from highdicom.sr import AlgorithmIdentification

    model = result.models.get(model_name)
    return AlgorithmIdentification(name=f"{model_name} ({NOT_FOR_CLINICAL_USE})"[:64], version=model.version if model else "unknown")


def box_polyline(box: tuple[float, float, float, float]):
    import numpy as np

    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def report_text(result: StudyResult) -> str:
    report = result.report
    lines = [NOT_FOR_CLINICAL_USE + ".", report.findings_text if report else ""]
    if report and report.impression:
        lines.append("Impression (retrieved): " + " ".join(s.text for s in report.impression))
    if result.input.quality_flags:  # what looks wrong with the input travels with the findings (which it never changed)
        lines.append(
            "Input quality flags (findings unchanged): "
            + "; ".join(f"{flag}: {QUALITY_FLAGS[flag]}" for flag in result.input.quality_flags)
        )
    return "\n".join(line for line in lines if line)


MODALITY_CODES = {"CR": ("CR", "Computed Radiography"), "DX": ("DX", "Digital Radiography")}


def image_library(header: Any):
    """TID 1600 Image Library for the source: one group (TID 1602: modality, rows, columns) holding its image entry
    (TID 1601), with the TID 1603 projection radiography descriptors the header really has: the patient orientation
    only when it is two valid values, the pixel spacing only when there is one (the SCOORDs are in pixels either way)."""
    from highdicom.sr import (
        CodeContentItem,
        CodedConcept,
        ContainerContentItem,
        ImageContentItem,
        NumContentItem,
        RelationshipTypeValues,
        TextContentItem,
        UIDRefContentItem,
    )
    from highdicom.sr.value_types import ContentSequence
    from pydicom.sr.codedict import codes as dcm

    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    pixels = CodedConcept("{pixels}", "UCUM", "Pixels")
    descriptors: list[Any] = []
    modality = MODALITY_CODES.get(str(header.get("Modality", "")))
    if modality:
        descriptors.append(
            CodeContentItem(name=dcm.DCM.Modality, value=CodedConcept(modality[0], "DCM", modality[1]), relationship_type=acquisition)
        )
    if "FrameOfReferenceUID" in header:
        descriptors.append(
            UIDRefContentItem(name=dcm.DCM.FrameOfReferenceUID, value=header.FrameOfReferenceUID, relationship_type=acquisition)
        )
    for keyword, name in (("Rows", dcm.DCM.PixelDataRows), ("Columns", dcm.DCM.PixelDataColumns)):
        if keyword in header:
            descriptors.append(NumContentItem(name=name, value=int(header[keyword].value), unit=pixels, relationship_type=acquisition))
    if "PatientOrientation" in header:
        row, column = header.PatientOrientation
        descriptors += [
            TextContentItem(name=dcm.DCM.PatientOrientationRow, value=str(row), relationship_type=acquisition),
            TextContentItem(name=dcm.DCM.PatientOrientationColumn, value=str(column), relationship_type=acquisition),
        ]
    spacing = header.get("ImagerPixelSpacing") or header.get("PixelSpacing")
    if spacing:
        descriptors += [
            NumContentItem(
                name=dcm.DCM.HorizontalPixelSpacing, value=float(spacing[1]), unit=dcm.UCUM.Millimeter, relationship_type=acquisition
            ),
            NumContentItem(
                name=dcm.DCM.VerticalPixelSpacing, value=float(spacing[0]), unit=dcm.UCUM.Millimeter, relationship_type=acquisition
            ),
        ]
    entry = ImageContentItem(
        name=CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    entry.ContentSequence = ContentSequence(descriptors)
    group = ContainerContentItem(name=dcm.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS)
    group.ContentSequence = ContentSequence([entry])
    library = ContainerContentItem(name=dcm.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS)
    library.ContentSequence = ContentSequence([group])
    return library


def build_sr(result: StudyResult, header: Any):
    """The TID 1500 Comprehensive 3D SR, addressed with the source's header as addressed_header() cleans it (`header`)."""
    # highdicom's INFO lines name the source by its SOPInstanceUID ("copy attributes of module ... from dataset <uid>"):
    # identifiers in logs (docs/phi.md). Its warnings (no values) still log.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    from highdicom.sr import (
        ContainerContentItem,
        Comprehensive3DSR,
        FindingSite,
        GraphicTypeValues,
        ImageRegion,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        SourceImageForRegion,
        TextContentItem,
        TrackingIdentifier,
    )
    from highdicom.sr.value_types import ContentSequence

    sop_class, sop_instance = str(header.SOPClassUID), str(header.SOPInstanceUID)
    site = [FindingSite(anatomic_location=codes.CHEST.sr())]
    used: list[codes.Code] = []
    groups: list[Any] = []

    def identified(kind: str, i: int, code: codes.Code, label: str, model: str) -> dict[str, Any]:
        """What a finding's and a box's measurement group both carry: their tracking id, finding, site and algorithm."""
        used.append(code)
        return {
            "tracking_identifier": TrackingIdentifier(uid=_uid(result, f"{kind}-{i}"), identifier=f"{kind} {i}: {label}"[:64]),
            "finding_type": code.sr(),
            "finding_sites": site,
            "algorithm_id": _algorithm(result, model),
        }

    for i, finding in enumerate(result.findings, start=1):
        code = codes.finding(finding.label)
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                **identified("finding", i, code, finding.label, "chest_xray_classifier"),
                source_images=[SourceImageForMeasurementGroup(sop_class, sop_instance)],
                qualitative_evaluations=[QualitativeEvaluation(code.sr(), (codes.PRESENT if finding.positive else codes.ABSENT).sr())],
                measurements=[
                    Measurement(name=codes.CERTAINTY.sr(), value=finding.probability, unit=codes.UNITLESS.sr()),
                    Measurement(name=codes.OPERATING_POINT.sr(), value=finding.threshold, unit=codes.UNITLESS.sr()),
                ],
            )
        )
    for i, detection in enumerate(result.detections, start=1):
        code = codes.finding(detection.label)
        groups.append(
            PlanarROIMeasurementsAndQualitativeEvaluations(
                **identified("box", i, code, detection.label, "anomaly_detector"),
                # SCOORD in the source image's pixels (PS3.3 C.18.6: image-relative, whatever the pixel spacing).
                referenced_region=ImageRegion(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=box_polyline(detection.box),
                    source_image=SourceImageForRegion(sop_class, sop_instance),
                ),
                qualitative_evaluations=[QualitativeEvaluation(code.sr(), codes.PRESENT.sr())],
                measurements=[Measurement(name=codes.CERTAINTY.sr(), value=detection.score, unit=codes.UNITLESS.sr())],
            )
        )
    report = MeasurementReport(
        observation_context=ObservationContext(), procedure_reported=codes.IMAGING_PROCEDURE.sr(), imaging_measurements=groups
    )
    content = report[0].ContentSequence
    # TID 1500 row 4: the Image Library before the Imaging Measurements (row 6).
    measurements_at = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    content.insert(measurements_at, image_library(header))
    # TID 1500 rows 12-13: the report-level Qualitative Evaluations container holds the draft report text.
    text = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS.sr(), relationship_type=RelationshipTypeValues.CONTAINS)
    text.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=codes.IMPRESSION.sr(), value=report_text(result)[:1024], relationship_type=RelationshipTypeValues.CONTAINS
            ),
        ]
    )
    content.append(text)
    sr = Comprehensive3DSR(
        evidence=[header],
        content=report[0],
        series_instance_uid=_uid(result, "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(result, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"RadStream {NOT_FOR_CLINICAL_USE}"[:64],
    )
    if codes.PRIVATE_SCHEME in codes.schemes_used(used):
        # The private scheme is declared (PS3.3 C.12.1.1.5), so a reader knows whose codes these are.
        from pydicom.dataset import Dataset

        scheme = Dataset()
        scheme.CodingSchemeDesignator = codes.PRIVATE_SCHEME
        scheme.CodingSchemeName = codes.PRIVATE_SCHEME_NAME
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    return sr


def sr_bytes(sr: Any) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- FHIR R4 (validated with fhir.resources' R4B models: these resources did not change from R4 to R4B) ---
def _concept(code: codes.Code, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [code.fhir()]}
    if text:
        concept["text"] = text
    return concept


def _oid(uid: str) -> dict[str, str]:
    """A DICOM UID as a FHIR identifier (the IG's form: system urn:ietf:rfc:3986, value urn:oid:)."""
    return {"system": URI, "value": f"urn:oid:{uid}"}


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _patient(header: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient"}
    if header.get("PatientID"):
        issuer = str(header.get("IssuerOfPatientID") or "")
        identifier: dict[str, Any] = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": f"urn:oid:{issuer}" if _OID.match(issuer) else PATIENT_ID_SYSTEM,
            "value": str(header.PatientID),
        }
        if issuer and not _OID.match(issuer):
            identifier["assigner"] = {"display": issuer}
        patient["identifier"] = [identifier]
    name = header.get("PatientName")
    if name:
        parts = {"family": name.family_name, "given": [g for g in (name.given_name, name.middle_name) if g]}
        parts = {k: v for k, v in parts.items() if v}
        if parts:
            patient["name"] = [parts]
    birth = str(header.get("PatientBirthDate") or "")
    if len(birth) == 8:  # a valid DA (addressed_header checked it)
        patient["birthDate"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    sex = {"M": "male", "F": "female", "O": "other"}.get(str(header.get("PatientSex") or ""))
    if sex:
        patient["gender"] = sex
    return patient


def _quantity(value: float) -> dict[str, Any]:
    return {
        "value": round(float(value), 6),
        "unit": codes.UNITLESS.meaning,
        "system": codes.FHIR_SYSTEMS["UCUM"],
        "code": codes.UNITLESS.value,
    }


def _component(code: codes.Code, value: float) -> dict[str, Any]:
    return {"code": _concept(code), "valueQuantity": _quantity(value)}


def _device(result: StudyResult, model_name: str) -> dict[str, Any]:
    """TID 4019's algorithm as a Device: name, version, family (the same codes as the SR)."""
    model = result.models.get(model_name)
    device: dict[str, Any] = {
        "resourceType": "Device",
        "status": "active",
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": model_name, "type": "model-name"}],
        "type": _concept(codes.ALGORITHM_FAMILY),
        "note": [{"text": f"{model.provenance if model else model_name}; {NOT_FOR_CLINICAL_USE}"}],
    }
    if model:
        device["version"] = [{"value": model.version}]
    return device


def build_fhir(
    result: StudyResult, header: Any, sr: bytes, sr_uid: str, critical: list[CriticalNotification] | None = None
) -> dict[str, Any]:
    """The collection Bundle: DiagnosticReport (the SR in presentedForm), an Observation per finding and per box,
    the algorithms as Devices, the Patient and the ImagingStudy, and a Communication per critical-finding notification
    about the report; urn:uuid fullUrls, deterministic per study and execution."""
    from fhir.resources.R4B.bundle import Bundle

    def full_url(entry: str) -> str:
        return f"urn:uuid:{uuid.uuid5(FHIR_NAMESPACE, '|'.join((result.study_id, result.execution_id, entry)))}"

    def ref(entry: str) -> dict[str, str]:
        return {"reference": full_url(entry)}

    issued = result.completed_at.astimezone(UTC).isoformat()
    modality = MODALITY_CODES.get(result.modality, (result.modality, result.modality))
    imaging_study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": ref("patient"),
        "identifier": [_oid(str(header.StudyInstanceUID))],
        "series": [
            {
                "uid": str(header.SeriesInstanceUID),
                "modality": {"system": codes.FHIR_SYSTEMS["DCM"], "code": modality[0], "display": modality[1]},
                "instance": [{"uid": str(header.SOPInstanceUID), "sopClass": {"system": URI, "code": f"urn:oid:{header.SOPClassUID}"}}],
            }
        ],
    }
    if header.get("AccessionNumber"):
        imaging_study["identifier"].append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": str(header.AccessionNumber),
            }
        )
    category = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]},
        {"coding": [{"system": codes.FHIR_SYSTEMS["DCM"], "code": "125007", "display": "Measurement Group"}]},
    ]
    common = {
        "status": "preliminary",
        "subject": ref("patient"),
        "issued": issued,
        "partOf": [ref("study")],
        "bodySite": _concept(codes.CHEST),
        "category": category,
        "derivedFrom": [{"identifier": _oid(sr_uid), "display": "RadStream TID 1500 SR"}],
    }
    entries: dict[str, dict[str, Any]] = {}
    for i, finding in enumerate(result.findings, start=1):
        entries[f"finding-{i}"] = common | {
            "resourceType": "Observation",
            "code": _concept(codes.finding(finding.label), finding.label.replace("_", " ")),
            "valueCodeableConcept": _concept(codes.PRESENT if finding.positive else codes.ABSENT),
            "component": [_component(codes.CERTAINTY, finding.probability), _component(codes.OPERATING_POINT, finding.threshold)],
            "device": ref("device-chest_xray_classifier"),
        }
    for i, detection in enumerate(result.detections, start=1):
        x0, y0, x1, y1 = detection.box
        entries[f"box-{i}"] = common | {
            "resourceType": "Observation",
            "code": _concept(codes.finding(detection.label), detection.label.replace("_", " ")),
            "valueCodeableConcept": _concept(codes.PRESENT),
            "component": [_component(codes.CERTAINTY, detection.score)],
            # The SCOORD as the IG's note form: the SR (derivedFrom) holds it as a DICOM image region.
            "note": [
                {
                    "text": f"Image region SCOORD POLYLINE (pixels of SOP instance {header.SOPInstanceUID}): "
                    f"{x0:.1f},{y0:.1f} {x1:.1f},{y0:.1f} {x1:.1f},{y1:.1f} {x0:.1f},{y1:.1f}"
                }
            ],
            "device": ref("device-anomaly_detector"),
        }
    observations = list(entries)
    entries["report"] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [codes.DIAGNOSTIC_IMAGING_REPORT.fhir(), codes.IMAGING_MEASUREMENT_REPORT.fhir()]},
        "subject": ref("patient"),
        "issued": issued,
        "imagingStudy": [ref("study")],
        "result": [ref(name) for name in observations],
        "conclusion": report_text(result),
        # The SR itself, so the form is there to present (a reference to a PACS it may not reach yet would not resolve).
        "presentedForm": [
            {
                "contentType": "application/dicom",
                "data": base64.b64encode(sr).decode(),
                "size": len(sr),
                "hash": base64.b64encode(hashlib.sha1(sr).digest()).decode(),
                "title": "RadStream TID 1500 SR",
            }
        ],
    }
    communications = []
    for notification in critical or []:
        name = f"critical-{notification.rule}"
        communications.append(name)
        entries[name] = {
            "resourceType": "Communication",
            # The alert was raised and sent (HL7 ORU, the event bus); a person's acknowledgement is in the console's trail.
            "status": "completed",
            "identifier": [{"system": URI, "value": f"urn:radstream:notification:{notification.message_id}"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category", "code": "alert"}]}],
            "priority": notification.priority,
            "subject": ref("patient"),
            "about": [ref("report")],
            "sent": notification.fired_at.astimezone(UTC).isoformat(),
            "sender": ref("device-chest_xray_classifier"),
            "reasonCode": [_concept(codes.finding(notification.label), notification.label)],
            "payload": [
                {
                    "contentString": f"Critical finding (rule {notification.rule}): {notification.label} probability "
                    f"{notification.probability:.3f} at or over {notification.threshold:.3f}. AI generated; {NOT_FOR_CLINICAL_USE}."
                }
            ],
        }
    entries["device-chest_xray_classifier"] = _device(result, "chest_xray_classifier")
    entries["device-anomaly_detector"] = _device(result, "anomaly_detector")
    entries["patient"] = _patient(header)
    entries["study"] = imaging_study
    profiles = {
        "DiagnosticReport": "ai-imaging-report",
        "Observation": "ai-imaging-finding",
        "Device": "ai-algorithm",
        "Patient": "source-patient",
        "ImagingStudy": "source-imaging-study",
        "Communication": "ai-critical-finding",
    }
    order = ["report", *observations, *communications, "device-chest_xray_classifier", "device-anomaly_detector", "patient", "study"]
    bundle_entries = []
    for name in order:
        resource = entries[name]
        resource["id"] = full_url(name).removeprefix("urn:uuid:")
        resource["meta"] = {"profile": [PROFILE_BASE + profiles[resource["resourceType"]]]}
        bundle_entries.append({"fullUrl": full_url(name), "resource": resource})
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": issued,
        "identifier": {"system": URI, "value": full_url("bundle")},
        "entry": bundle_entries,
    }
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


def critical_notifications(store: ObjectStore, results_bucket: str, study_id: str) -> list[CriticalNotification]:
    """The critical-finding notifications NotifyCriticalFindings recorded for the study that go in its FHIR bundle."""
    try:
        recorded = StudyNotifications.model_validate_json(store.get_bytes(results_bucket, notifications_key(study_id)))
    except ObjectNotFound:
        return []
    return [n for n in recorded.notifications if n.in_fhir_bundle]


def export_result(request: ExportRequest, store: ObjectStore, results_bucket: str) -> ExportedResult:
    study_id = request.study.study_id
    if request.study.image.format != "dicom":
        raise PermanentError("export is for DICOM studies; this one was uploaded as " + request.study.image.format, study_id=study_id)
    result = StudyResult.model_validate_json(store.get_bytes(request.stored.result.bucket, request.stored.result.key))
    data = source_bytes(store, result)
    source = source_header(data, study_id)
    header = addressed_header(source)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in header]
    if missing:
        # Type 1 in every image IOD: without them (or with a value that is no UID) a PACS cannot file an SR, nor an EHR
        # link the report. The result stands (the models' outputs do not depend on them); the export says why it wrote nothing.
        reason = f"not exported: the source DICOM lacks a valid {', '.join(missing)}"
        logger.warning("export skipped", reason=reason)
        write_status(store, results_bucket, study_id, result.execution_id, "skipped", message=reason)
        return ExportedResult(study_id=study_id, skipped=reason)
    sr = build_sr(result, header)
    sr_data = sr_bytes(sr)
    fhir = json.dumps(
        build_fhir(result, header, sr_data, str(sr.SOPInstanceUID), critical_notifications(store, results_bucket, study_id)), indent=2
    ).encode()
    overlay_data = overlay_bytes(
        build_overlay(
            result, data, header, lambda what: _uid(result, what), f"RadStream {NOT_FOR_CLINICAL_USE}", NOT_FOR_CLINICAL_USE, MANUFACTURER
        )
    )
    prefix = f"results/{study_id}/"
    stored_sr = store.put_bytes(results_bucket, prefix + "report.sr.dcm", sr_data, content_type="application/dicom")
    stored_overlay = store.put_bytes(results_bucket, prefix + "report.overlay.dcm", overlay_data, content_type="application/dicom")
    stored_fhir = store.put_bytes(results_bucket, prefix + "report.fhir.json", fhir, content_type="application/fhir+json")
    refs = [ObjectRef(bucket=results_bucket, key=stored.key) for stored in (stored_sr, stored_overlay, stored_fhir)]
    write_status(store, results_bucket, study_id, result.execution_id, "built", exports=refs)
    return ExportedResult(
        study_id=study_id,
        sr=ObjectRef(bucket=results_bucket, key=stored_sr.key),
        fhir=ObjectRef(bucket=results_bucket, key=stored_fhir.key),
        overlay=ObjectRef(bucket=results_bucket, key=stored_overlay.key),
        bytes_in=len(data),
        bytes_out=stored_sr.size + stored_overlay.size + stored_fhir.size,
    )


def warm_builders() -> None:
    """Build the SR, the FHIR bundle and the overlay of shared/warmup's synthetic study in memory (nothing stored): the
    first real export then finds highdicom's tables of the standard, the FHIR models and the overlay's codecs loaded
    (a first DICOM study paid ~2 s of them)."""
    from shared import warmup

    result = StudyResult.model_validate_json(warmup.RESULT.read_bytes())
    data = warmup.DICOM.read_bytes()
    header = addressed_header(source_header(data, result.study_id))
    sr = build_sr(result, header)
    sr_data = sr_bytes(sr)
    json.dumps(build_fhir(result, header, sr_data, str(sr.SOPInstanceUID)))
    overlay_bytes(
        build_overlay(
            result, data, header, lambda what: _uid(result, what), f"RadStream {NOT_FOR_CLINICAL_USE}", NOT_FOR_CLINICAL_USE, MANUFACTURER
        )
    )
