"""What the gateway serves to viewers and RISs: the DICOM objects RadStream made for each study (the SR and the overlay,
results/<study_id>/report.sr.dcm and report.overlay.dcm in the results bucket), found by their attributes as QIDO-RS
(PS3.18 8.3.4) and C-FIND (PS3.4 C.2.2.2) match them, and read back for WADO-RS and C-GET.

Knows nothing of HTTP or DIMSE: `search(level, filters)` answers one query level with one data set per study, series
or instance (the attributes PS3.18 Table 6.7.1-2 lists for that level, and the counts); `instances(...)` names the
objects under a study, series or instance for retrieval. Headers are read once per object (without pixel data) and
kept while the object's size is unchanged, so a re-run's new SR is seen at the next query.
"""

from __future__ import annotations

import fnmatch
import io
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from shared.errors import RadStreamError
from shared.storage import ObjectStore

RESULTS_PREFIX = "results/"
SERVED = ("report.sr.dcm", "report.overlay.dcm")
Level = Literal["STUDY", "SERIES", "IMAGE"]

# The attributes each level returns and matches on (PS3.18 Table 6.7.1-2, PS3.4 C.6.2.1: Study Root).
PATIENT_STUDY = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
]
SERIES = ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime"]
INSTANCE = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns"]
COUNTS = {
    "STUDY": ["ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
    "SERIES": ["NumberOfSeriesRelatedInstances"],
    "IMAGE": [],
}
RETURNED = {"STUDY": PATIENT_STUDY, "SERIES": SERIES, "IMAGE": INSTANCE}
# What a query at a level may match on: its own attributes and those of the levels above (PS3.18 8.3.4.1).
MATCHABLE = {
    "STUDY": [*PATIENT_STUDY, "ModalitiesInStudy"],
    "SERIES": [*PATIENT_STUDY, *SERIES],
    "IMAGE": [*PATIENT_STUDY, *SERIES, *INSTANCE],
}
UIDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
DATES = {"StudyDate", "SeriesDate", "PatientBirthDate"}
KEY_OF = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class BadQuery(ValueError):
    """A query this archive cannot answer: names the attribute, never the value."""


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    header: Dataset


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def matches(ds: Dataset, keyword: str, wanted: str, modalities: set[str] | None = None) -> bool:
    """One attribute's match (PS3.4 C.2.2.2): list of UIDs, date range, wildcards * and ?, or single value."""
    if keyword == "ModalitiesInStudy":
        return any(fnmatch.fnmatchcase(m, pattern) for m in (modalities or set()) for pattern in wanted.split("\\"))
    found = _value(ds, keyword)
    if keyword in UIDS:
        return found in {uid.strip() for uid in wanted.replace(",", "\\").split("\\")}
    if keyword in DATES and "-" in wanted:
        low, _, high = wanted.partition("-")
        return bool(found) and (not low or found >= low) and (not high or found <= high)
    if "*" in wanted or "?" in wanted:
        if keyword == "PatientName":
            return fnmatch.fnmatchcase(found.upper(), wanted.upper())
        return fnmatch.fnmatchcase(found, wanted)
    return found.upper() == wanted.upper() if keyword == "PatientName" else found == wanted


class Archive:
    """The SR and overlay objects in `bucket` under results/<study_id>/, searchable and readable."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self.store = store
        self.bucket = bucket
        self._headers: dict[str, Stored] = {}
        self._lock = threading.Lock()

    def objects(self) -> list[Stored]:
        import pydicom

        keys = [k for k in self.store.list_keys(self.bucket, RESULTS_PREFIX) if k.rsplit("/", 1)[-1] in SERVED]
        found = []
        for key in keys:
            head = self.store.head(self.bucket, key)
            if head is None:
                continue
            with self._lock:
                known = self._headers.get(key)
            if known is None or known.size != head.size:
                try:
                    header = pydicom.dcmread(io.BytesIO(self.store.get_bytes(self.bucket, key)), stop_before_pixels=True)
                except (RadStreamError, OSError, ValueError, AttributeError, KeyError):
                    continue  # removed or rewritten meanwhile: the next query sees it
                known = Stored(key, head.size, header)
                with self._lock:
                    self._headers[key] = known
            found.append(known)
        return found

    def search(self, level: Level, filters: dict[str, str], *, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        """One data set per matching study, series or instance: the level's attributes, its counts and the UIDs above."""
        for keyword in filters:
            if keyword not in MATCHABLE[level]:
                raise BadQuery(f"{keyword} is not a matching key at the {level} level")
        objects = self.objects()
        by_study: dict[str, list[Stored]] = {}
        by_series: dict[str, list[Stored]] = {}
        for item in objects:
            by_study.setdefault(_value(item.header, "StudyInstanceUID"), []).append(item)
            by_series.setdefault(_value(item.header, "SeriesInstanceUID"), []).append(item)
        groups: dict[str, list[Stored]] = {"STUDY": by_study, "SERIES": by_series}.get(level) or {
            _value(item.header, "SOPInstanceUID"): [item] for item in objects
        }
        answers = []
        for _uid, members in sorted(groups.items()):
            first = members[0].header
            study = by_study[_value(first, "StudyInstanceUID")]
            modalities = {_value(m.header, "Modality") for m in study}
            if not all(matches(first, k, v, modalities) for k, v in filters.items() if v):
                continue
            answer = Dataset()
            for keyword in [*PATIENT_STUDY, *RETURNED[level]] if level != "STUDY" else PATIENT_STUDY:
                if keyword in first:
                    setattr(answer, keyword, first.get(keyword))
            if level == "STUDY":
                answer.ModalitiesInStudy = sorted(m for m in modalities if m)
                answer.NumberOfStudyRelatedSeries = len({_value(m.header, "SeriesInstanceUID") for m in members})
                answer.NumberOfStudyRelatedInstances = len(members)
            elif level == "SERIES":
                answer.NumberOfSeriesRelatedInstances = len(members)
            if "SpecificCharacterSet" in first:
                answer.SpecificCharacterSet = first.SpecificCharacterSet
            answer.QueryRetrieveLevel = level
            answers.append(answer)
        return answers[offset : offset + limit if limit is not None else None]

    def instances(self, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None) -> list[Stored]:
        """The objects under a study, series or instance (each UID may be a list: C-GET's UID list matching)."""
        wanted = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid}
        return sorted((o for o in self.objects() if all(matches(o.header, k, v) for k, v in wanted.items() if v)), key=lambda o: o.key)

    def read(self, item: Stored) -> bytes:
        return self.store.get_bytes(self.bucket, item.key)


def metadata(header: Dataset) -> dict[str, Any]:
    """An instance's metadata as DICOM JSON (PS3.18 F.2), no pixel data (the header was read without it)."""
    return header.to_json_dict()  # binary values (none large once pixel data is left out) inline, base64
