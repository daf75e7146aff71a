"""Results a viewer can find: storescu sends a CR, the local pipeline makes its SR and overlay, and clients no one on
this project wrote look them up in the gateway — dicomweb-client (QIDO-RS search, WADO-RS retrieve and metadata),
dcmtk's findscu (Study Root C-FIND, study and series level) and getscu (C-GET). Before issue 21 `findscu` got "No
Acceptable Presentation Contexts" and `GET /studies` a 404. A peer that cannot run fails the test."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pydicom
import pytest
import requests

from radstream.runtime import LocalRuntime
from services.gateway.server import Gateway, LocalPipeline
from shared.observability import logger
from synthetic.instances import NAME, PATIENT_ID, cr_instance, gateway_settings
from synthetic.peers import run, tool

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A gateway in front of the local pipeline, after one CR went through it: (gateway, source, results folder)."""
    tmp = tmp_path_factory.mktemp("served")
    settings = gateway_settings(tmp / "data")
    data = cr_instance("jpeg-ls-lossless")
    (tmp / "cr.dcm").write_bytes(data)
    with LocalRuntime(settings, workers=1) as runtime:
        pipeline = LocalPipeline(runtime, workers=1)
        with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
            sent = run([tool("storescu"), "-xt", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(tmp / "cr.dcm")])
            assert sent.returncode == 0, sent.stderr
            (future,) = pipeline.futures.values()
            outcome = future.result(timeout=300)
            assert outcome.status == "succeeded", outcome.message
            (results,) = (settings.data_dir / "results" / "results").iterdir()
            yield gateway, pydicom.dcmread(io.BytesIO(data)), results, tmp
        pipeline.close()


def client(gateway: Gateway):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=gateway.stow.url.rsplit("/studies", 1)[0])


def uid(item: dict, tag: str) -> str:
    return item[tag]["Value"][0]


def test_qido_rs_finds_the_study_its_series_and_instances(served):
    gateway, source, results, _ = served
    sr = pydicom.dcmread(results / "report.sr.dcm")
    overlay = pydicom.dcmread(results / "report.overlay.dcm")
    web = client(gateway)
    studies = web.search_for_studies(search_filters={"PatientID": PATIENT_ID})
    assert [uid(s, "0020000D") for s in studies] == [source.StudyInstanceUID]
    assert studies[0]["00201206"]["Value"] == [2] and studies[0]["00201208"]["Value"] == [2]  # series, instances
    assert studies[0]["00080050"]["Value"] == ["ACC-GW-1"]
    assert web.search_for_studies(search_filters={"PatientID": "SOMEONE-ELSE"}) == []
    assert len(web.search_for_studies(search_filters={"PatientName": "GATEWAY^*", "StudyDate": "20250101-20271231"})) == 1
    assert web.search_for_studies(search_filters={"StudyDate": "-20000101"}) == []
    series = web.search_for_series(study_instance_uid=source.StudyInstanceUID)
    assert sorted(uid(s, "0020000E") for s in series) == sorted([sr.SeriesInstanceUID, overlay.SeriesInstanceUID])
    assert sorted(uid(s, "00080060") for s in series) == sorted([sr.Modality, overlay.Modality])
    instances = web.search_for_instances(study_instance_uid=source.StudyInstanceUID)
    assert sorted((uid(i, "00080016"), uid(i, "00080018")) for i in instances) == sorted(
        [(COMPREHENSIVE_3D_SR, sr.SOPInstanceUID), (SECONDARY_CAPTURE, overlay.SOPInstanceUID)]
    )
    only_sr = web.search_for_instances(search_filters={"SOPClassUID": COMPREHENSIVE_3D_SR})
    assert [uid(i, "00080018") for i in only_sr] == [sr.SOPInstanceUID]
    assert len(web.search_for_instances(limit=1)) == 1
    with pytest.raises(requests.HTTPError) as e:
        web.search_for_studies(search_filters={"NoSuchAttribute": "x"})
    assert e.value.response.status_code == 400


def test_wado_rs_retrieves_the_sr_and_overlay_as_stored_and_their_metadata(served):
    gateway, source, results, _ = served
    sr_bytes = (results / "report.sr.dcm").read_bytes()
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    overlay = pydicom.dcmread(results / "report.overlay.dcm")
    web = client(gateway)
    got = web.retrieve_instance(source.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert got.SOPInstanceUID == sr.SOPInstanceUID and got.ContentSequence == sr.ContentSequence
    assert str(got.PatientName) == NAME and got.PatientID == PATIENT_ID
    study = list(web.retrieve_study(source.StudyInstanceUID))
    assert sorted(d.SOPInstanceUID for d in study) == sorted([sr.SOPInstanceUID, overlay.SOPInstanceUID])
    (stored_overlay,) = [d for d in study if d.SOPInstanceUID == overlay.SOPInstanceUID]
    assert stored_overlay.PixelData == overlay.PixelData  # as stored (JPEG-LS), not re-encoded
    metadata = web.retrieve_study_metadata(source.StudyInstanceUID)
    assert sorted(uid(m, "00080018") for m in metadata) == sorted([sr.SOPInstanceUID, overlay.SOPInstanceUID])
    assert all("7FE00010" not in m for m in metadata)
    with pytest.raises(requests.HTTPError) as e:
        web.retrieve_study("1.2.3.4.5.6.7.8.9")
    assert e.value.response.status_code == 404


def test_findscu_finds_the_study_and_its_series(served, tmp_path):
    gateway, source, results, _ = served
    sr = pydicom.dcmread(results / "report.sr.dcm")
    overlay = pydicom.dcmread(results / "report.overlay.dcm")
    base = [tool("findscu"), "-S", "-X", "-aet", "VIEWER", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)]

    def find(folder: str, *keys: str) -> list[pydicom.Dataset]:
        (tmp_path / folder).mkdir()
        found = run([*base, "-od", str(tmp_path / folder), *[a for k in keys for a in ("-k", k)]])
        assert found.returncode == 0, found.stdout + found.stderr
        return [pydicom.dcmread(p) for p in sorted((tmp_path / folder).glob("rsp*.dcm"))]

    studies = find(
        "study",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={PATIENT_ID}",
        "StudyInstanceUID",
        "PatientName",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
    )
    assert [(s.StudyInstanceUID, str(s.PatientName), int(s.NumberOfStudyRelatedInstances)) for s in studies] == [
        (source.StudyInstanceUID, NAME, 2)
    ]
    series = find("series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={source.StudyInstanceUID}", "SeriesInstanceUID", "Modality")
    assert sorted(s.SeriesInstanceUID for s in series) == sorted([sr.SeriesInstanceUID, overlay.SeriesInstanceUID])
    assert find("none", "QueryRetrieveLevel=STUDY", "PatientID=SOMEONE-ELSE", "StudyInstanceUID") == []


def test_getscu_retrieves_the_sr_and_the_overlay(served, tmp_path):
    gateway, source, results, _ = served
    sr = pydicom.dcmread(results / "report.sr.dcm")
    overlay = pydicom.dcmread(results / "report.overlay.dcm")
    got = run(
        [
            tool("getscu"),
            "-S",
            "-aet",
            "VIEWER",
            "-aec",
            gateway.ae_title,
            "127.0.0.1",
            str(gateway.dimse.port),
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={source.StudyInstanceUID}",
        ]
    )
    assert got.returncode == 0, got.stdout + got.stderr
    files = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p) for p in tmp_path.iterdir() if p.is_file())}
    assert set(files) == {sr.SOPInstanceUID, overlay.SOPInstanceUID}, got.stdout + got.stderr
    assert files[sr.SOPInstanceUID].ContentSequence == sr.ContentSequence
    # getscu proposes uncompressed syntaxes only: the JPEG-LS overlay arrives decompressed, the same pixels.
    assert (files[overlay.SOPInstanceUID].pixel_array == overlay.pixel_array).all()
    series_only = tmp_path / "series"
    series_only.mkdir()
    got = run(
        [
            tool("getscu"),
            "-S",
            "-aec",
            gateway.ae_title,
            "127.0.0.1",
            str(gateway.dimse.port),
            "-od",
            str(series_only),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={source.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={sr.SeriesInstanceUID}",
        ]
    )
    assert got.returncode == 0, got.stdout + got.stderr
    assert [pydicom.dcmread(p).SOPInstanceUID for p in series_only.iterdir()] == [sr.SOPInstanceUID]


def test_queries_leave_no_uid_or_patient_value_in_the_logs(served, caplog):
    gateway, source, results, _ = served
    caplog.set_level(logging.DEBUG)
    web = client(gateway)
    web.search_for_studies(search_filters={"PatientID": PATIENT_ID, "PatientName": "GATEWAY^*"})
    web.retrieve_study_metadata(source.StudyInstanceUID)
    found = run(
        [
            tool("findscu"),
            "-S",
            "-aec",
            gateway.ae_title,
            "127.0.0.1",
            str(gateway.dimse.port),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"PatientID={PATIENT_ID}",
            "-k",
            "StudyInstanceUID",
        ]
    )
    assert found.returncode == 0
    # The gateway's lines and pynetdicom's (the clients in this process log their own requests: not the gateway's)
    lines = [json.loads(logger.registered_formatter.format(r)) for r in caplog.records if r.name.startswith(("radstream", "pynetdicom"))]
    assert any(line.get("route") == "/studies/{uid}/metadata" for line in lines)
    assert any(line["message"] == "C-FIND" and (line["query_level"], line["matches"]) == ("STUDY", 1) for line in lines)
    text = "\n".join(map(json.dumps, lines))
    for value in (source.StudyInstanceUID, PATIENT_ID, NAME, "GATEWAY"):
        assert value not in text, value


def test_results_are_served_from_the_results_bucket_only(served, tmp_path):
    """The received instance (images bucket) is not served: a viewer finds what RadStream made, not the input."""
    gateway, source, _, _ = served
    instances = client(gateway).search_for_instances(study_instance_uid=source.StudyInstanceUID)
    assert source.SOPInstanceUID not in {uid(i, "00080018") for i in instances}
    assert isinstance(gateway.archive.bucket, str) and gateway.archive.bucket == gateway.settings.results_bucket
    assert Path(gateway.settings.data_dir / gateway.settings.results_bucket).is_dir()


def test_orthanc_queries_radstream_as_a_peer(served, tmp_path):
    """Orthanc (a PACS no one here wrote) with RadStream as one of its DicomModalities: its query, study then series
    level, is answered by the gateway's C-FIND; with RadStream as one of its DICOMweb servers, it retrieves the study
    (WADO-RS) into its own store. (Orthanc 1.10's DIMSE retrieve is C-MOVE, which the gateway does not serve.)"""
    import json

    from radstream.orthanc import Orthanc
    from shared.errors import ConfigurationError

    gateway, source, results, _ = served
    sr = pydicom.dcmread(results / "report.sr.dcm")
    overlay = pydicom.dcmread(results / "report.overlay.dcm")
    try:
        pacs = Orthanc(tmp_path / "orthanc", modalities={"radstream": (gateway.ae_title, "127.0.0.1", gateway.dimse.port)})
    except ConfigurationError as e:  # not installed, or did not start: fail loudly, never skip
        pytest.fail(str(e))
    with pacs:
        study = pacs.post(
            "/modalities/radstream/query",
            json.dumps({"Level": "Study", "Query": {"PatientID": PATIENT_ID, "StudyInstanceUID": "", "AccessionNumber": ""}}).encode(),
        )
        answers = pacs.get(f"{study['Path']}/answers")
        assert len(answers) == 1, answers
        content = pacs.get(f"{study['Path']}/answers/0/content?simplify")
        assert (content["StudyInstanceUID"], content["AccessionNumber"]) == (source.StudyInstanceUID, "ACC-GW-1")
        series = pacs.post(
            "/modalities/radstream/query",
            json.dumps(
                {"Level": "Series", "Query": {"StudyInstanceUID": source.StudyInstanceUID, "SeriesInstanceUID": "", "Modality": ""}}
            ).encode(),
        )
        found = [pacs.get(f"{series['Path']}/answers/{i}/content?simplify") for i in pacs.get(f"{series['Path']}/answers")]
        assert sorted(s["SeriesInstanceUID"] for s in found) == sorted([sr.SeriesInstanceUID, overlay.SeriesInstanceUID])
        import urllib.request

        server = urllib.request.Request(
            f"{pacs.url}/dicom-web/servers/radstream",
            method="PUT",
            data=json.dumps({"Url": gateway.stow.url.rsplit("/studies", 1)[0] + "/"}).encode(),
        )
        urllib.request.urlopen(server, timeout=30).close()
        pacs.post("/dicom-web/servers/radstream/retrieve", json.dumps({"Resources": [{"Study": source.StudyInstanceUID}]}).encode())
        for uid_, data in (
            (sr.SOPInstanceUID, (results / "report.sr.dcm").read_bytes()),
            (overlay.SOPInstanceUID, (results / "report.overlay.dcm").read_bytes()),
        ):
            (found_instance,) = pacs.post("/tools/lookup", uid_.encode())
            with urllib.request.urlopen(f"{pacs.url}/instances/{found_instance['ID']}/file", timeout=30) as response:
                got, ours = pydicom.dcmread(io.BytesIO(response.read())), pydicom.dcmread(io.BytesIO(data))
            assert (got.SOPClassUID, got.get("PixelData"), got.get("ContentSequence")) == (
                ours.SOPClassUID,
                ours.get("PixelData"),
                ours.get("ContentSequence"),
            ), uid_
