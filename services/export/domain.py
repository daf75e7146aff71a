"""Export stage: a DICOM study's result, DICOM-native and FHIR, addressed back to the hospital.

Inputs: the workflow state's validated study and stored result (object keys only); the result itself
(results/<study_id>/result.json) and the source DICOM's header (images bucket, pixels not read, the same
bytes validate checked: sha256). Outputs, both under results/<study_id>/:
- report.sr.dcm: a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom): one TID 1501
  group per classifier finding (a qualitative evaluation Present/Absent, the probability and the threshold
  as measurements), one TID 1410 group per detector box (an image-region SCOORD POLYLINE in the source
  image's pixels, referencing its SOP instance, with the score), the draft report text in the report's
  Qualitative Evaluations container, and each group's algorithm (TID 4019: model name and version).
  The source's patient, study and general equipment modules are copied (highdicom's evidence), so a PACS
  files the SR with the study. Series description and the text both say "not for clinical use".
- report.fhir.json: a FHIR R4 (R4B models, identical for these resources) collection Bundle: the
  DiagnosticReport, one Observation per finding and per box, the Patient and the ImagingStudy, mapped as
  the "DICOM SR to FHIR Resource Mapping" IG maps TID 1500 (docs/gateway.md says where it is simplified).
These two objects carry the patient module by design (docs/phi.md); the stage returns only their keys.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import timezone
from typing import Any

from services.export.overlay import build_overlay, overlay_bytes
from shared.contracts import ObjectRef, StudyResult
from shared.errors import InvalidImage, PermanentError
from shared.messages import ExportedResult, ExportRequest
from shared.observability import logger
from shared.storage import ObjectStore

NOT_FOR_CLINICAL_USE = "AI-generated draft, not for clinical use"
MANUFACTURER = "RadStream"
SR_SERIES_NUMBER = 9901
# Our labels in a private coding scheme (PS3.16 8.2: 99-prefixed designators are local); where SNOMED CT has
# the finding, the FHIR Observation codes it there too.
PRIVATE_SCHEME = "99RADSTREAM"
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                "ReferringPhysicianName")
SNOMED = {
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Effusion": ("60046008", "Pleural effusion"),
    "Pleural Effusion": ("60046008", "Pleural effusion"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Atelectasis": ("46621007", "Atelectasis"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "nodule_mass": ("786838002", "Pulmonary nodule"),
}


def finding_code(label: str):
    from highdicom.sr import CodedConcept

    # Labels over 16 characters become a Long Code Value (PS3.3 8.8), never truncated into a collision.
    return CodedConcept(value=label, scheme_designator=PRIVATE_SCHEME, meaning=label.replace("_", " "))


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "present": CodedConcept("52101004", "SCT", "Present"),
        "absent": CodedConcept("2667000", "SCT", "Absent"),
        "probability": CodedConcept("probability", PRIVATE_SCHEME, "Probability"),
        "threshold": CodedConcept("threshold", PRIVATE_SCHEME, "Decision threshold"),
        "score": CodedConcept("score", PRIVATE_SCHEME, "Detection score"),
        "unity": CodedConcept("1", "UCUM", "no units"),
        "chest_xray": CodedConcept("43075005", "SCT", "Radiographic imaging procedure"),
        "chest": CodedConcept("51185008", "SCT", "Thoracic structure"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "impression": CodedConcept("121073", "DCM", "Impression"),
        "qualitative": CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
    }


def source_bytes(store: ObjectStore, result: StudyResult) -> bytes:
    """The source DICOM, the very bytes validate checked (sha256)."""
    data = store.get_bytes(result.input.image.bucket, result.input.image.key)
    if hashlib.sha256(data).hexdigest() != result.input.sha256:
        raise InvalidImage("the DICOM file changed in the images bucket after it was validated; upload it again", study_id=result.study_id)
    return data


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
    return "\n".join(line for line in lines if line)


def build_sr(result: StudyResult, source: Any):
    # highdicom's INFO lines name the source by its SOPInstanceUID ("copy attributes of module ... from dataset <uid>"):
    # identifiers in logs (docs/phi.md). Its warnings (no values) still log.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    from highdicom.sr import (
        ContainerContentItem, Comprehensive3DSR, GraphicTypeValues, ImageRegion, Measurement, MeasurementReport,
        MeasurementsAndQualitativeEvaluations, ObservationContext, PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation, RelationshipTypeValues, SourceImageForMeasurementGroup, SourceImageForRegion, TextContentItem,
        TrackingIdentifier,
    )
    from highdicom.sr.value_types import ContentSequence

    c = _codes()
    # The patient and study modules' Type 2 attributes (PS3.3 C.7.1.1, C.7.2.1) must be present, empty when unknown;
    # an archive's header may lack them, so they are added empty (never invented) to this copy of the header.
    for keyword in TYPE2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")
    sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
    groups: list[Any] = []
    for i, finding in enumerate(result.findings, start=1):
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=_uid(result, f"finding-{i}"), identifier=f"finding {i}: {finding.label}"),
            finding_type=finding_code(finding.label),
            algorithm_id=_algorithm(result, "chest_xray_classifier"),
            source_images=[SourceImageForMeasurementGroup(sop_class, sop_instance)],
            qualitative_evaluations=[QualitativeEvaluation(finding_code(finding.label), c["present"] if finding.positive else c["absent"])],
            measurements=[
                Measurement(name=c["probability"], value=finding.probability, unit=c["unity"]),
                Measurement(name=c["threshold"], value=finding.threshold, unit=c["unity"]),
            ],
        ))
    for i, detection in enumerate(result.detections, start=1):
        groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=_uid(result, f"box-{i}"), identifier=f"box {i}: {detection.label}"),
            referenced_region=ImageRegion(
                graphic_type=GraphicTypeValues.POLYLINE, graphic_data=box_polyline(detection.box),
                source_image=SourceImageForRegion(sop_class, sop_instance),
            ),
            finding_type=finding_code(detection.label),
            algorithm_id=_algorithm(result, "anomaly_detector"),
            qualitative_evaluations=[QualitativeEvaluation(finding_code(detection.label), c["present"])],
            measurements=[Measurement(name=c["score"], value=detection.score, unit=c["unity"])],
        ))
    report = MeasurementReport(
        observation_context=ObservationContext(),
        procedure_reported=c["chest_xray"],
        imaging_measurements=groups,
        # The image library (TID 1600) describes the source; highdicom needs its PatientOrientation (Type 2C in CR/DX)
        # for that, so a source without it gets no library: the groups still reference it by SOP instance.
        referenced_images=[source] if "PatientOrientation" in source else None,
    )
    # TID 1500 rows 12-13: the report-level Qualitative Evaluations container holds the draft report text.
    text = ContainerContentItem(name=c["qualitative"], relationship_type=RelationshipTypeValues.CONTAINS)
    text.ContentSequence = ContentSequence([
        TextContentItem(name=c["impression"], value=report_text(result)[:1024], relationship_type=RelationshipTypeValues.CONTAINS),
    ])
    report[0].ContentSequence.append(text)
    sr = Comprehensive3DSR(
        evidence=[source], content=report[0], series_instance_uid=_uid(result, "series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(result, "sr"), instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=f"RadStream {NOT_FOR_CLINICAL_USE}"[:64],
    )
    # The private scheme is declared (PS3.3 C.12.1.1.5), so a reader knows whose codes these are.
    from pydicom.dataset import Dataset

    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "RadStream model labels and measurement names"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    return sr


def sr_bytes(sr: Any) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- FHIR (R4; the R4B models validate these resources, which R4B did not change) ---
def _coding(label: str) -> dict[str, Any]:
    codings = [{"system": "urn:oid:1.2.826.0.1.3680043.10.1288.99", "code": label, "display": label.replace("_", " ")}]
    if label in SNOMED:
        codings.insert(0, {"system": "http://snomed.info/sct", "code": SNOMED[label][0], "display": SNOMED[label][1]})
    return {"coding": codings, "text": label.replace("_", " ")}


def _patient(source: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "patient"}
    if source.get("PatientID"):
        patient["identifier"] = [{"value": str(source.PatientID)}]
    name = source.get("PatientName")
    if name:
        parts = {"family": name.family_name, "given": [g for g in (name.given_name, name.middle_name) if g]}
        patient["name"] = [{k: v for k, v in parts.items() if v}]
    birth = str(source.get("PatientBirthDate") or "")
    if len(birth) == 8 and birth.isdigit():
        patient["birthDate"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    sex = {"M": "male", "F": "female", "O": "other"}.get(str(source.get("PatientSex") or ""))
    if sex:
        patient["gender"] = sex
    return patient


def _quantity(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}


def _component(code: str, display: str, value: float) -> dict[str, Any]:
    return {"code": {"coding": [{"system": "urn:oid:1.2.826.0.1.3680043.10.1288.99", "code": code, "display": display}]},
            "valueQuantity": _quantity(value)}


def build_fhir(result: StudyResult, source: Any, sr_uid: str) -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle

    issued = result.completed_at.astimezone(timezone.utc).isoformat()
    study_uid = str(source.StudyInstanceUID)
    imaging_study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": "study", "status": "available", "subject": {"reference": "urn:uuid:patient"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "series": [{"uid": str(source.SeriesInstanceUID), "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": result.modality},
                    "instance": [{"uid": str(source.SOPInstanceUID), "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{source.SOPClassUID}"}}]}],
    }
    if source.get("AccessionNumber"):
        imaging_study["identifier"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                                            "value": str(source.AccessionNumber)})
    common = {"status": "preliminary", "subject": {"reference": "urn:uuid:patient"}, "issued": issued,
              "partOf": [{"reference": "urn:uuid:study"}], "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "51185008", "display": "Thoracic structure"}]},
              "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}]}
    observations: list[dict[str, Any]] = []
    for i, finding in enumerate(result.findings, start=1):
        model = result.models.get("chest_xray_classifier")
        observations.append(common | {
            "resourceType": "Observation", "id": f"finding-{i}", "code": _coding(finding.label),
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "52101004" if finding.positive else "2667000",
                                                 "display": "Present" if finding.positive else "Absent"}]},
            "component": [_component("probability", "Probability", finding.probability), _component("threshold", "Decision threshold", finding.threshold)],
            "device": {"display": f"chest_xray_classifier {model.version if model else ''} ({NOT_FOR_CLINICAL_USE})".replace("  ", " ")},
        })
    for i, detection in enumerate(result.detections, start=1):
        model = result.models.get("anomaly_detector")
        x0, y0, x1, y1 = detection.box
        observations.append(common | {
            "resourceType": "Observation", "id": f"box-{i}", "code": _coding(detection.label),
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "52101004", "display": "Present"}]},
            "component": [_component("score", "Detection score", detection.score)],
            # The SCOORD as the IG's note form: the SR (derivedFrom) holds it as a DICOM image region.
            "note": [{"text": f"Image region SCOORD POLYLINE (pixels of SOP instance {source.SOPInstanceUID}): "
                              f"{x0:.1f},{y0:.1f} {x1:.1f},{y0:.1f} {x1:.1f},{y1:.1f} {x0:.1f},{y1:.1f}"}],
            "device": {"display": f"anomaly_detector {model.version if model else ''} ({NOT_FOR_CLINICAL_USE})".replace("  ", " ")},
        })
    for observation in observations:
        observation["derivedFrom"] = [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{sr_uid}"}, "display": "RadStream TID 1500 SR"}]
    report = {
        "resourceType": "DiagnosticReport", "id": "report", "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "126000", "display": "Imaging Measurement Report"}]},
        "subject": {"reference": "urn:uuid:patient"}, "issued": issued,
        "imagingStudy": [{"reference": "urn:uuid:study"}],
        "result": [{"reference": f"urn:uuid:{o['id']}"} for o in observations],
        "conclusion": report_text(result),
        "presentedForm": [{"contentType": "application/dicom", "url": f"urn:oid:{sr_uid}", "title": "RadStream TID 1500 SR"}],
    }
    resources = [report, *observations, _patient(source), imaging_study]
    bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": issued,
              "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


def export_result(request: ExportRequest, store: ObjectStore, results_bucket: str) -> ExportedResult:
    study_id = request.study.study_id
    if request.study.image.format != "dicom":
        raise PermanentError("export is for DICOM studies; this one was uploaded as " + request.study.image.format, study_id=study_id)
    result = StudyResult.model_validate_json(store.get_bytes(request.stored.result.bucket, request.stored.result.key))
    data = source_bytes(store, result)
    source = source_header(data, study_id)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not str(source.get(k) or "").strip()]
    if missing:
        # Type 1 in every image IOD: without them a PACS cannot file an SR, nor an EHR link the report. The result
        # stands (the models' outputs do not depend on them); the export says why it wrote nothing.
        reason = f"not exported: the source DICOM lacks {', '.join(missing)}"
        logger.warning("export skipped", reason=reason)
        return ExportedResult(study_id=study_id, skipped=reason)
    sr = build_sr(result, source)
    sr_data = sr_bytes(sr)
    fhir = json.dumps(build_fhir(result, source, str(sr.SOPInstanceUID)), indent=2).encode()
    overlay_data = overlay_bytes(build_overlay(
        result, data, source_header(data, study_id), lambda what: _uid(result, what), f"RadStream {NOT_FOR_CLINICAL_USE}",
        NOT_FOR_CLINICAL_USE, MANUFACTURER))
    prefix = f"results/{study_id}/"
    stored_sr = store.put_bytes(results_bucket, prefix + "report.sr.dcm", sr_data, content_type="application/dicom")
    stored_overlay = store.put_bytes(results_bucket, prefix + "report.overlay.dcm", overlay_data, content_type="application/dicom")
    stored_fhir = store.put_bytes(results_bucket, prefix + "report.fhir.json", fhir, content_type="application/fhir+json")
    return ExportedResult(
        study_id=study_id, sr=ObjectRef(bucket=results_bucket, key=stored_sr.key), fhir=ObjectRef(bucket=results_bucket, key=stored_fhir.key),
        overlay=ObjectRef(bucket=results_bucket, key=stored_overlay.key),
        bytes_in=len(data), bytes_out=stored_sr.size + stored_overlay.size + stored_fhir.size,
    )

