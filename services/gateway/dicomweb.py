"""DICOMweb reads over what RadStream made (services/gateway/archive.py): QIDO-RS (PS3.18 10.6) and WADO-RS (10.4).

QIDO-RS: GET /studies, /series, /instances, /studies/{study}/series, /studies/{study}/instances,
/studies/{study}/series/{series}/instances; query parameters are attribute keywords or tags (PatientID=…,
0020000D=…, StudyDate=20260101-20261231, PatientName=DOE*, ModalitiesInStudy=SR), `limit`, `offset`, and
`includefield` / `fuzzymatching` (accepted; every level's attributes are always returned, matching is exact).
Answers application/dicom+json, 200 with an empty array when nothing matches.
WADO-RS: GET /studies/{study}[/series/{series}[/instances/{instance}]] answers multipart/related;
type="application/dicom" with each object as stored (its transfer syntax named in the part's Content-Type);
…/metadata answers the objects' headers as application/dicom+json. 404 when nothing is there.
Each function returns (status, content type, body); the HTTP server (stow.py) only routes and writes.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_keyword, tag_for_keyword

from services.gateway.archive import Archive, BadQuery, Level, metadata

Response = tuple[int, str, bytes]
UID = r"([0-9.]{1,64})"
QIDO = {
    re.compile(r"^/studies/?$"): ("STUDY", ()),
    re.compile(r"^/series/?$"): ("SERIES", ()),
    re.compile(r"^/instances/?$"): ("IMAGE", ()),
    re.compile(rf"^/studies/{UID}/series/?$"): ("SERIES", ("StudyInstanceUID",)),
    re.compile(rf"^/studies/{UID}/instances/?$"): ("IMAGE", ("StudyInstanceUID",)),
    re.compile(rf"^/studies/{UID}/series/{UID}/instances/?$"): ("IMAGE", ("StudyInstanceUID", "SeriesInstanceUID")),
}
WADO = re.compile(rf"^/studies/{UID}(?:/series/{UID}(?:/instances/{UID})?)?(/metadata)?/?$")
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
JSON = "application/dicom+json"


def _text(code: int, message: str) -> Response:
    return code, "text/plain; charset=utf-8", message.encode()


def _keyword(name: str) -> str:
    """A query parameter's attribute keyword: the keyword itself, or its tag as 8 hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = dictionary_keyword(int(name, 16)) if _known_tag(int(name, 16)) else ""
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise BadQuery("a query parameter names no DICOM attribute")
    return keyword


def _known_tag(tag: int) -> bool:
    try:
        dictionary_keyword(tag)
        return True
    except KeyError:
        return False


def qido(path: str, query: str, archive: Archive) -> Response | None:
    """A QIDO-RS answer, or None when `path` is not a QIDO-RS resource."""
    for pattern, (level, path_keys) in QIDO.items():  # noqa: B007 - the matching route's, read after the break
        route = pattern.match(path)
        if route is not None:
            break
    else:
        return None
    filters: dict[str, str] = dict(zip(path_keys, route.groups()))
    limit, offset = None, 0
    try:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "limit":
                limit = int(value)
            elif name == "offset":
                offset = int(value)
            elif name not in CONTROL:
                keyword = _keyword(name)
                filters[keyword] = f"{filters[keyword]}\\{value}" if keyword in filters and keyword.endswith("UID") else value
        if (limit is not None and limit < 0) or offset < 0:
            raise BadQuery("limit and offset must not be negative")
        level_of: Level = level  # type: ignore[assignment]
        answers = archive.search(level_of, filters, limit=limit, offset=offset)
    except ValueError as e:  # BadQuery, or limit/offset not integers
        return _text(400, str(e) if isinstance(e, BadQuery) else "limit and offset must be integers")
    return 200, JSON, json.dumps([a.to_json_dict() for a in answers]).encode()


def wado(path: str, archive: Archive) -> Response | None:
    """A WADO-RS answer (instances or metadata), or None when `path` is not a WADO-RS resource."""
    route = WADO.match(path)
    if route is None:
        return None
    study, series, instance, want_metadata = route.groups()
    found = archive.instances(study, series, instance)
    if not found:
        return _text(404, "no such study, series or instance here")
    if want_metadata:
        return 200, JSON, json.dumps([metadata(item.header) for item in found]).encode()
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for item in found:
        syntax = str(item.header.file_meta.get("TransferSyntaxUID", "")) if hasattr(item.header, "file_meta") else ""
        head = f"--{boundary}\r\nContent-Type: application/dicom" + (f"; transfer-syntax={syntax}" if syntax else "")
        parts.append(head.encode() + b"\r\n\r\n" + archive.read(item) + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return 200, f'multipart/related; type="application/dicom"; boundary={boundary}', body


def answer(path: str, query: str, archive: Archive) -> Response | None:
    """QIDO-RS or WADO-RS for a GET, or None when the path is neither."""
    return qido(path, query, archive) or wado(path, archive)
