"""The one code table of the exports: every concept the SR (TID 1500) and the FHIR bundle name, coded the same in both.

Standard codes first (SNOMED CT as DICOM's SCT, DICOM's own DCM, LOINC, UCUM), chosen from the context groups
TID 1500 and the IHE AI Results (AIR) profile draw on: a finding is a TID 1501/1410 group whose Finding is the
disorder's SNOMED CT concept, with a Present/Absent qualitative evaluation (SCT 52101004 / 272519000); the
classifier's probability and the detector's box score are the model's Certainty of Finding (DCM 111012, CID 6048
CAD Operating Point Axis Label), the decision threshold is its CAD Operating Point (DCM 111071), both unitless
(UCUM 1); the algorithm is TID 4019 (name, version, family DCM 123110 Artificial Intelligence). A label no
standard code names exactly (a model's own, such as "nodule_mass" or "focal_opacity", or one a swapped-in model
brings) keeps a code in the private scheme 99RADSTREAM (PS3.16 8.2: 99-prefixed designators are local), declared in
the SR's Coding Scheme Identification and, in FHIR, under the system PRIVATE_SYSTEM. Never a guess at a near code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRIVATE_SCHEME = "99RADSTREAM"
PRIVATE_SCHEME_NAME = "RadStream model labels"
# The FHIR system of the private scheme: an OID arc under the project's root (the DICOM UIDs' own), as urn:oid.
PRIVATE_SYSTEM = "urn:oid:1.2.826.0.1.3680043.10.1288.99"
FHIR_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    PRIVATE_SCHEME: PRIVATE_SYSTEM,
}


@dataclass(frozen=True)
class Code:
    scheme: str  # the DICOM Coding Scheme Designator (SCT, DCM, LN, UCUM, UMLS, 99RADSTREAM)
    value: str
    meaning: str

    def sr(self) -> Any:
        """As a highdicom CodedConcept (a value over 16 characters becomes a Long Code Value, PS3.3 8.8)."""
        from highdicom.sr import CodedConcept

        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning[:64])

    def fhir(self) -> dict[str, str]:
        """As a FHIR Coding."""
        return {"system": FHIR_SYSTEMS[self.scheme], "code": self.value, "display": self.meaning}


# Findings and lesions by model label: SNOMED CT disorders and morphologies (the chest findings of CheXpert-style
# labels; "Effusion" is how NIH ChestX-ray14 models name a pleural effusion).
FINDINGS: dict[str, Code] = {
    "Atelectasis": Code("SCT", "46621007", "Atelectasis"),
    "Cardiomegaly": Code("SCT", "8186001", "Cardiomegaly"),
    "Consolidation": Code("SCT", "95436008", "Lung consolidation"),
    "Edema": Code("SCT", "19242006", "Pulmonary edema"),
    "Pleural Effusion": Code("SCT", "60046008", "Pleural effusion"),
    "Effusion": Code("SCT", "60046008", "Pleural effusion"),
    "Pneumothorax": Code("SCT", "36118008", "Pneumothorax"),
    "Pneumonia": Code("SCT", "233604007", "Pneumonia"),
    "Mass": Code("SCT", "4147007", "Mass"),
    "Nodule": Code("SCT", "27925004", "Nodule"),
}

PRESENT = Code("SCT", "52101004", "Present")
ABSENT = Code("SCT", "272519000", "Absent")
CERTAINTY = Code("DCM", "111012", "Certainty of Finding")  # the classifier's probability, the detector's box score
OPERATING_POINT = Code("DCM", "111071", "CAD Operating Point")  # the decision threshold the finding was called at
UNITLESS = Code("UCUM", "1", "no units")
IMAGING_PROCEDURE = Code("SCT", "363679005", "Imaging procedure")  # TID 1500 Procedure Reported, CID 100
CHEST = Code("SCT", "51185008", "Thoracic structure")  # Finding Site
FINDING_SITE = Code("SCT", "363698007", "Finding Site")
IMPRESSION = Code("DCM", "121073", "Impression")
QUALITATIVE_EVALUATIONS = Code("UMLS", "C0034375", "Qualitative Evaluations")  # TID 1500 row 12
ALGORITHM_FAMILY = Code("DCM", "123110", "Artificial Intelligence")  # TID 4019, CID 7162
IMAGING_MEASUREMENT_REPORT = Code("DCM", "126000", "Imaging Measurement Report")  # TID 1500's title, CID 7021
DIAGNOSTIC_IMAGING_REPORT = Code("LN", "18748-4", "Diagnostic Imaging Report")  # CID 7000; FHIR DiagnosticReport.code


def finding(label: str) -> Code:
    """The label's standard code, else its private one (declared)."""
    return FINDINGS.get(label) or Code(PRIVATE_SCHEME, label, label.replace("_", " "))


def schemes_used(codes: list[Code]) -> set[str]:
    return {c.scheme for c in codes}
