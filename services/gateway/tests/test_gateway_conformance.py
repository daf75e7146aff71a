"""The gateway as a hospital's systems drive it, with clients no one on this project wrote: dicomweb-client (STOW-RS,
the way it sends: a CRLF preamble, chunked transfer encoding for large bodies), curl, dcmtk's echoscu/storescu, and
pynetdicom as an SCU. Each observation of issue 21 is a test here: STOW-RS per PS3.18, Success only for what the
pipeline can process (acceptance rule, whole pixel data in every transfer syntax, MAX_IMAGE_BYTES), no instance
replaced under its SOP Instance UID, the called AE title and the calling AE allow-list, Error Comments that fit, and
one log line per event. A peer that cannot run fails the test."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from synthetic.phantoms import generate_phantom
from synthetic.transfer_syntaxes import SYNTAXES, dicom_dataset, encode, stored_values
from services.gateway.domain import COMMENT_MAX, study_id_for
from services.gateway.server import Gateway
from synthetic.instances import KEY, cr_instance, gateway_settings
from synthetic.peers import run, send_c_store, tool
from shared.acceptance import SECONDARY_CAPTURE
from shared.settings import Settings

SUCCESS, DUPLICATE, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0x0111, 0xA900, 0xC000
STORESCU_PROPOSES = {
    "explicit-le": [],
    "implicit-le": ["-xi"],
    "explicit-be": ["-xb"],
    "deflated-le": ["-xd"],
    "rle": ["-xr"],
    "jpeg-baseline": ["-xy"],
    "jpeg-extended": ["-xx"],
    "jpeg-lossless-sv1": ["-xs"],
    "jpeg-ls-lossless": ["-xt"],
    "jpeg-ls-near-lossless": ["-xu"],
    "jpeg2000-lossless": ["-xv"],
    "jpeg2000": ["-xw"],
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "data")


def dicomweb(gateway: Gateway, chunk_size: int = 10**6):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=gateway.stow.url.rsplit("/studies", 1)[0], chunk_size=chunk_size)
    return client


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    """A well-formed file whose pixel data is cut: a native image at half its length, a codestream cut in half and
    wrapped again as one fragment (what a sender whose disk filled up, or a broken compressor, produces)."""
    ds = dataset(data)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    else:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4 * 2]
    return to_bytes(ds)


def sc_instance(seed: int = 5) -> bytes:
    image = generate_phantom(np.random.default_rng(seed), size=128).image
    chosen = SYNTAXES["explicit-le"]
    ds = dicom_dataset(
        stored_values(image, chosen.bits),
        bits_stored=chosen.bits,
        SOPClassUID=SECONDARY_CAPTURE,
        Modality="DX",
        BodyPartExamined="CHEST",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        ConversionType="WSD",
    )
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    return encode(ds, chosen)


def stored_path(settings: Settings, data: bytes) -> Path:
    ds = dataset(data)
    study_id, instance = study_id_for(KEY.encode(), ds.StudyInstanceUID, ds.SOPInstanceUID)
    return settings.data_dir / "images" / "incoming" / study_id / f"{instance}.dcm"


def c_store(gateway: Gateway, data: bytes) -> pydicom.Dataset:
    """pynetdicom as the SCU: the status data set the gateway answers one C-STORE with (the data set in its own syntax)."""
    answer = send_c_store(gateway.dimse.port, gateway.ae_title, dataset(data))
    assert answer is not None and "Status" in answer, "no C-STORE response"
    return answer


def failures(answer: pydicom.Dataset) -> dict[str, int]:
    return {item.ReferencedSOPInstanceUID: item.FailureReason for item in answer.get("FailedSOPSequence", [])}


def referenced(answer: pydicom.Dataset) -> list[str]:
    return [item.ReferencedSOPInstanceUID for item in answer.get("ReferencedSOPSequence", [])]


# --- 1. STOW-RS per PS3.18, with dicomweb-client -------------------------------------------------------------------


def test_dicomweb_client_stores_several_instances_with_its_preamble_and_chunked_uploads(settings):
    chest = [cr_instance("explicit-le", seed=seed, size=256) for seed in (1, 2, 3)]
    with Gateway(settings) as gateway:
        # Small: one body with its CRLF preamble and Content-Length. Large: dicomweb-client switches to chunked encoding.
        small = dicomweb(gateway).store_instances([dataset(chest[0])])
        large = dicomweb(gateway, chunk_size=8192).store_instances([dataset(data) for data in chest[1:]])
    assert referenced(small) == [dataset(chest[0]).SOPInstanceUID] and not failures(small)
    assert referenced(large) == [dataset(data).SOPInstanceUID for data in chest[1:]] and not failures(large)
    for data in chest:
        assert dataset(stored_path(settings, data).read_bytes()).PixelData == dataset(data).PixelData


def test_stow_answers_202_when_some_fail_and_409_when_all_fail_with_a_failure_reason_per_instance(settings):
    import requests

    chest, abdomen, cut = (
        cr_instance("explicit-le", seed=4),
        cr_instance("explicit-le", body_part="ABDOMEN"),
        truncated(cr_instance("jpeg-ls-lossless", seed=6)),
    )
    with Gateway(settings) as gateway:
        some = dicomweb(gateway, chunk_size=4096).store_instances([dataset(chest), dataset(abdomen)])
        with pytest.raises(requests.HTTPError) as e:
            dicomweb(gateway).store_instances([dataset(abdomen), dataset(cut)])
    assert referenced(some) == [dataset(chest).SOPInstanceUID]
    assert failures(some) == {dataset(abdomen).SOPInstanceUID: CANNOT_UNDERSTAND}
    assert e.value.response.status_code == 409
    assert e.value.response.headers["Content-Type"] == "application/dicom+json"
    answer = pydicom.Dataset.from_json(e.value.response.json())
    assert failures(answer) == {dataset(abdomen).SOPInstanceUID: CANNOT_UNDERSTAND, dataset(cut).SOPInstanceUID: DOES_NOT_MATCH}
    assert not stored_path(settings, abdomen).exists() and not stored_path(settings, cut).exists()


def test_curl_preamble_epilogue_chunked_and_the_study_in_the_path(settings, tmp_path):
    """What RFC 2046 and RFC 9112 allow, sent by curl: text before the first delimiter and after the last, transport
    padding on a delimiter line, a part without headers, chunked encoding; POST /studies/{uid} refuses another study's
    instance."""
    study = generate_uid()
    ours, other = cr_instance("explicit-le", study_uid=study, seed=7), cr_instance("explicit-le", seed=8)
    boundary = "b0und4ry"
    body = (
        b"This is the preamble, ignored.\r\n--"
        + boundary.encode()
        + b"  \r\nContent-Type: application/dicom\r\n\r\n"
        + ours
        + b"\r\n--"
        + boundary.encode()
        + b"\r\n\r\n"
        + other
        + b"\r\n--"
        + boundary.encode()
        + b"--\r\nThis is the epilogue, ignored.\r\n"
    )
    (tmp_path / "body").write_bytes(body)
    with Gateway(settings) as gateway:
        sent = run(
            [
                "curl",
                "-sS",
                "-o",
                str(tmp_path / "answer.json"),
                "-w",
                "%{http_code}",
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
                "--data-binary",
                f"@{tmp_path / 'body'}",
                f"{gateway.stow.url}/{study}",
            ]
        )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == "202"
    answer = pydicom.Dataset.from_json((tmp_path / "answer.json").read_text())
    assert referenced(answer) == [dataset(ours).SOPInstanceUID]
    assert failures(answer) == {dataset(other).SOPInstanceUID: DOES_NOT_MATCH}
    assert stored_path(settings, ours).read_bytes() == ours and not stored_path(settings, other).exists()


# --- 2. Success only for what can be processed ------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_every_transfer_syntax_is_stored_whole_and_refused_truncated(settings, tmp_path, syntax):
    """storescu sends the whole instance: Success. pynetdicom sends it with its pixel data cut: a failure status that
    names PixelData, and nothing stored. Over STOW the cut file gets a FailureReason, not a 200."""
    whole = cr_instance(syntax, seed=11, size=128)
    path = tmp_path / "whole.dcm"
    path.write_bytes(whole)
    cut = truncated(whole)
    with Gateway(settings) as gateway:
        # storescu proposes the file's own transfer syntax (one option each), so the instance travels as encoded; it has
        # no option for JPEG Lossless process 14 (non-SV1): pynetdicom sends that one.
        if syntax in STORESCU_PROPOSES:
            sent = run(
                [tool("storescu"), *STORESCU_PROPOSES[syntax], "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)]
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
        else:
            assert c_store(gateway, whole).Status == SUCCESS
        other = dataset(cut)
        other.SOPInstanceUID = generate_uid()
        cut = to_bytes(other)
        answer = c_store(gateway, cut)
        import requests

        with pytest.raises(requests.HTTPError) as e:
            dicomweb(gateway).store_instances([dataset(cut)])
    assert dataset(stored_path(settings, whole).read_bytes()).file_meta.TransferSyntaxUID == SYNTAXES[syntax].uid
    assert answer.Status == DOES_NOT_MATCH, hex(answer.Status)
    assert answer.ErrorComment.startswith("PixelData") and len(answer.ErrorComment) <= COMMENT_MAX
    assert e.value.response.status_code == 409
    assert failures(pydicom.Dataset.from_json(e.value.response.json())) == {other.SOPInstanceUID: DOES_NOT_MATCH}
    assert not stored_path(settings, cut).exists()


def test_a_file_cut_short_is_refused_over_stow_and_dimse(settings, tmp_path):
    """The bytes of a file cut mid-pixel-data (a transfer that stopped): pydicom reads a short Pixel Data or none."""
    import requests

    for syntax in ("explicit-le", "jpeg-ls-lossless"):
        whole = cr_instance(syntax, seed=12)
        cut = whole[: len(whole) - 1000]
        with Gateway(settings) as gateway:
            with pytest.raises(requests.HTTPError) as e:
                dicomweb(gateway)._http_post_multipart_application_dicom(gateway.stow.url, [cut])
        assert e.value.response.status_code == 409, syntax
        assert failures(pydicom.Dataset.from_json(e.value.response.json())) == {dataset(whole).SOPInstanceUID: DOES_NOT_MATCH}
        assert not stored_path(settings, whole).exists()


def test_instances_over_max_image_bytes_are_refused_over_dimse_and_stow(settings, tmp_path):
    """One limit, the pipeline's MAX_IMAGE_BYTES: an instance over it would fail validate, so it is not acknowledged."""
    import requests

    big, small = cr_instance("explicit-le", seed=13, size=320), cr_instance("explicit-le", seed=14, size=64)
    limited = settings.model_copy(update={"max_image_bytes": (len(big) + len(small)) // 2})
    path = tmp_path / "big.dcm"
    path.write_bytes(big)
    with Gateway(limited) as gateway:
        refused = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)])
        answer = c_store(gateway, big)
        mixed = dicomweb(gateway, chunk_size=16384).store_instances([dataset(big), dataset(small)])
        with pytest.raises(requests.HTTPError) as e:
            dicomweb(gateway, chunk_size=16384).store_instances([dataset(big)])
    assert refused.returncode != 0 and "cannotunderstand" in (refused.stdout + refused.stderr).lower()
    assert answer.Status == CANNOT_UNDERSTAND and "MAX_IMAGE_BYTES" in answer.ErrorComment
    assert referenced(mixed) == [dataset(small).SOPInstanceUID]
    assert failures(mixed) == {dataset(big).SOPInstanceUID: CANNOT_UNDERSTAND}
    assert e.value.response.status_code == 409
    assert not stored_path(limited, big).exists()


def test_secondary_capture_chest_image_is_stored(settings, tmp_path):
    path = tmp_path / "sc.dcm"
    data = sc_instance()
    path.write_bytes(data)
    with Gateway(settings) as gateway:
        sent = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "(success)" in (sent.stdout + sent.stderr).lower()
    stored = dataset(stored_path(settings, data).read_bytes())
    assert stored.SOPClassUID == SECONDARY_CAPTURE and stored.PixelData == dataset(data).PixelData


def test_an_instance_never_replaces_another_under_its_sop_instance_uid(settings, tmp_path):
    """The good instance stays: a truncated one, and a different whole one, sent with its SOP Instance UID are refused
    over STOW and DIMSE; the same instance sent again (a re-send, over either) is acknowledged and changes nothing."""
    import requests

    good = cr_instance("explicit-le", seed=21)
    impostor = dataset(cr_instance("explicit-le", seed=22))
    impostor.StudyInstanceUID, impostor.SOPInstanceUID = dataset(good).StudyInstanceUID, dataset(good).SOPInstanceUID
    impostor_bytes = to_bytes(impostor)
    path = tmp_path / "good.dcm"
    path.write_bytes(good)
    with Gateway(settings) as gateway:
        sent = run([tool("storescu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = stored_path(settings, good).read_bytes()
        answers = {}
        for name, attempt in (("truncated", truncated(good)), ("impostor", impostor_bytes)):
            with pytest.raises(requests.HTTPError) as e:
                dicomweb(gateway)._http_post_multipart_application_dicom(gateway.stow.url, [attempt])
            assert e.value.response.status_code == 409
            answers[name] = failures(pydicom.Dataset.from_json(e.value.response.json()))
        over_dimse = c_store(gateway, impostor_bytes)
        resent = run([tool("storescu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)])
        again = dicomweb(gateway)._http_post_multipart_application_dicom(gateway.stow.url, [good])
    uid = impostor.SOPInstanceUID
    assert answers == {"truncated": {uid: DOES_NOT_MATCH}, "impostor": {uid: DUPLICATE}}
    assert over_dimse.Status == DUPLICATE and "SOPInstanceUID" in over_dimse.ErrorComment
    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert referenced(again) == [uid] and not failures(again)
    assert stored_path(settings, good).read_bytes() == stored
    assert dataset(stored).PixelData == dataset(good).PixelData


# --- 3. AE titles -----------------------------------------------------------------------------------------------------


def test_a_wrong_called_ae_title_is_rejected_at_association_and_logged_once(settings, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="radstream.gateway")
    path = tmp_path / "cr.dcm"
    path.write_bytes(cr_instance("explicit-le"))
    with Gateway(settings) as gateway:
        echo = run([tool("echoscu"), "-aet", "MODALITY", "-aec", "WRONGAE", "127.0.0.1", str(gateway.dimse.port)])
        store = run([tool("storescu"), "-aet", "MODALITY", "-aec", "WRONGAE", "127.0.0.1", str(gateway.dimse.port), str(path)])
        right = run([tool("echoscu"), "-aet", "MODALITY", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)])
    for refused in (echo, store):
        assert refused.returncode != 0 and "called ae title not recognized" in (refused.stdout + refused.stderr).lower(), refused.stderr
    assert right.returncode == 0, right.stderr
    lines = [vars(r) for r in caplog.records if r.getMessage() == "association rejected"]
    assert len(lines) == 2, lines
    assert all(
        line["called_ae"] == "WRONGAE" and line["calling_ae"] == "MODALITY" and line["peer"].startswith("127.0.0.1:") for line in lines
    )
    assert not list(settings.data_dir.rglob("*.dcm"))


def test_the_calling_ae_allow_list_admits_titles_from_their_hosts_only(settings, caplog):
    caplog.set_level(logging.INFO, logger="radstream.gateway")
    allowed = settings.model_copy(update={"gateway_allowed_calling_aes": "DX_ROOM_2@127.0.0.0/8, CR_ROOM_1@10.1.2.3, ANYWHERE"})
    with Gateway(allowed) as gateway:
        port = str(gateway.dimse.port)

        def echo(calling: str) -> subprocess.CompletedProcess:
            return run([tool("echoscu"), "-aet", calling, "-aec", gateway.ae_title, "127.0.0.1", port])

        outcomes = {calling: echo(calling) for calling in ("DX_ROOM_2", "ANYWHERE", "CR_ROOM_1", "INTRUDER")}
    assert outcomes["DX_ROOM_2"].returncode == 0 and outcomes["ANYWHERE"].returncode == 0
    for calling in ("CR_ROOM_1", "INTRUDER"):
        text = (outcomes[calling].stdout + outcomes[calling].stderr).lower()
        assert outcomes[calling].returncode != 0 and "calling ae title not recognized" in text, text
    lines = [vars(r) for r in caplog.records if r.getMessage() == "association rejected"]
    assert sorted(line["calling_ae"] for line in lines) == ["CR_ROOM_1", "INTRUDER"], lines
    assert all("GATEWAY_ALLOWED_CALLING_AES" in line["reason"] and line["peer"].startswith("127.0.0.1:") for line in lines)


def test_allow_list_entries_are_checked_at_start():
    from shared.errors import ConfigurationError

    for bad in ("A" * 17, "CR\\ROOM", "CR@not a host", "CR@@x"):
        with pytest.raises(ConfigurationError, match="GATEWAY_ALLOWED_CALLING_AES"):
            Settings.from_env({"GATEWAY_ALLOWED_CALLING_AES": bad})
    assert Settings.from_env({"GATEWAY_ALLOWED_CALLING_AES": "PACS@10.0.0.5, CR_1@10.2.0.0/16,"}).gateway_allowed_ae_list == [
        "PACS@10.0.0.5",
        "CR_1@10.2.0.0/16",
    ]


# --- 4. Error comments and log lines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["abdomen", "no-body-part", "modality", "no-modality", "frames", "photometric"])
def test_error_comments_fit_64_characters_as_whole_words(settings, change):
    ds = dataset(cr_instance("explicit-le", seed=31, size=64))
    expected = {
        "abdomen": "BodyPartExamined (or AnatomicRegionSequence) is not CHEST",
        "modality": "Modality must be CR for this SOP class",
        "no-modality": "Modality must be CR for this SOP class",
        "no-body-part": "BodyPartExamined (or AnatomicRegionSequence) is not CHEST",
        "frames": "NumberOfFrames is not 1: single-frame images are processed",
        "photometric": "PhotometricInterpretation is not grayscale, RGB or YBR",
    }[change]
    if change == "abdomen":
        ds.BodyPartExamined = "ABDOMEN"
    elif change == "no-body-part":
        del ds.BodyPartExamined
    elif change == "modality":
        ds.Modality = "MR"
    elif change == "no-modality":
        del ds.Modality
    elif change == "frames":
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
    elif change == "photometric":
        ds.PhotometricInterpretation = "PALETTE COLOR"
    data = to_bytes(ds)
    with Gateway(settings) as gateway:
        answer = c_store(gateway, data)
    status, comment = answer.Status, answer.get("ErrorComment")
    assert status != SUCCESS
    assert comment == expected and len(comment) <= COMMENT_MAX


def test_whole_native_ybr_full_422_is_acknowledged_and_decodes(tmp_path):
    """Native YBR_FULL_422 holds two samples a pixel (PS3.3 C.7.6.3.1.2): whole at 2/3 of Rows x Columns x 3, and the
    pipeline's decoder reads it; cut short it is refused."""
    from services.gateway.domain import Receiver, Refused
    from shared.pixels import decode_dicom
    from shared.storage import LocalObjectStore

    ds = dataset(sc_instance(seed=41))
    rows, columns = int(ds.Rows), int(ds.Columns)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(41).integers(0, 256, rows * columns * 2, dtype=np.uint8).tobytes()
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth", "PresentationLUTShape"):
        if keyword in ds:
            delattr(ds, keyword)
    whole = to_bytes(ds)
    receiver = Receiver(LocalObjectStore(tmp_path), "images", KEY.encode())
    assert receiver.receive(whole).size == len(whole)
    assert decode_dicom(whole, "ybr422").pixels.shape == (rows, columns)
    ds.PixelData = ds.PixelData[: rows * columns]
    ds.SOPInstanceUID = generate_uid()
    with pytest.raises(Refused) as e:
        receiver.receive(to_bytes(ds))
    assert e.value.status == DOES_NOT_MATCH and e.value.reason.startswith("PixelData")
