"""The gateway against real peers: dcmtk's echoscu/storescu as the modality, an HTTP client for STOW-RS; what it
acknowledges, refuses and stores. The pipeline behind it is tested in tests/integration/test_gateway_pipeline.py.
A peer that cannot run fails."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from synthetic.instances import KEY, cr_instance, gateway_settings
from synthetic.peers import run, tool
from synthetic.phantoms import generate_phantom
from synthetic.transfer_syntaxes import dicom_dataset, stored_values
from services.gateway.domain import Receiver, Refused, study_id_for
from services.gateway.server import Gateway
from shared.settings import Settings
from shared.storage import LocalObjectStore


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "data")


def test_non_chest_and_unsupported_sop_classes_are_refused_with_dimse_statuses(settings, tmp_path):
    abdomen = tmp_path / "abdomen.dcm"
    abdomen.write_bytes(cr_instance("explicit-le", body_part="ABDOMEN"))
    ct = dicom_dataset(
        stored_values(generate_phantom(np.random.default_rng(1), size=64).image, 12),
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        Modality="CT",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )
    ct.file_meta.MediaStorageSOPClassUID = ct.SOPClassUID
    ct_path = tmp_path / "ct.dcm"
    ct.save_as(ct_path, enforce_file_format=True)
    with Gateway(settings) as gateway:
        port = str(gateway.dimse.port)
        refused = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", port, str(abdomen)])
        assert refused.returncode != 0
        assert "store response (error: cannotunderstand)" in (refused.stdout + refused.stderr).lower(), refused.stderr  # 0xC000
        unsupported = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", port, str(ct_path)])
        assert unsupported.returncode != 0
        assert (
            "no presentation context" in (unsupported.stdout + unsupported.stderr).lower()
            or "no acceptable presentation" in (unsupported.stdout + unsupported.stderr).lower()
        ), unsupported.stderr
    assert not list(settings.data_dir.rglob("*.dcm"))  # nothing refused was stored


def test_calling_ae_titles_outside_the_allowed_list_are_rejected(settings):
    allowed = settings.model_copy(update={"gateway_allowed_calling_aes": "CR_ROOM_1, DX_ROOM_2"})
    with Gateway(allowed) as gateway:
        port = str(gateway.dimse.port)
        assert run([tool("echoscu"), "-aet", "DX_ROOM_2", "-aec", gateway.ae_title, "127.0.0.1", port]).returncode == 0
        rejected = run([tool("echoscu"), "-aet", "INTRUDER", "-aec", gateway.ae_title, "127.0.0.1", port])
        assert rejected.returncode != 0 and "reject" in (rejected.stdout + rejected.stderr).lower(), rejected.stderr


def test_the_association_limit_holds(settings):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    limited = settings.model_copy(update={"gateway_max_associations": 1})
    with Gateway(limited) as gateway:
        scu = AE(ae_title="HOLDER")
        scu.add_requested_context(Verification)
        held = scu.associate("127.0.0.1", gateway.dimse.port, ae_title=gateway.ae_title)
        assert held.is_established
        try:
            second = run([tool("echoscu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)])
            assert second.returncode != 0 and "reject" in (second.stdout + second.stderr).lower(), second.stderr
        finally:
            held.release()
        assert run([tool("echoscu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)]).returncode == 0


def test_stow_rs_stores_parts_and_answers_per_ps3_18(settings):
    chest, abdomen = cr_instance("explicit-le"), cr_instance("explicit-le", body_part="ABDOMEN")
    boundary = "radstream-boundary-7d1"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in (chest, abdomen))
    body += f"--{boundary}--\r\n".encode()
    with Gateway(settings) as gateway:
        request = urllib.request.Request(
            gateway.stow.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            code, answer = response.status, json.loads(response.read())
        wrong = urllib.request.Request(gateway.stow.url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(wrong, timeout=30)
        assert e.value.code == 415
    small = settings.model_copy(update={"max_image_bytes": 1024})  # each instance is held to the pipeline's limit
    with Gateway(small) as gateway:
        request = urllib.request.Request(
            gateway.stow.url,
            data=body,
            method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        assert e.value.code == 409
        assert [item["00081197"]["Value"] for item in json.loads(e.value.read())["00081198"]["Value"]] == [[0xC000], [0xC000]]
    assert code == 202  # one stored, one refused
    source = pydicom.dcmread(io.BytesIO(chest))
    assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [source.SOPInstanceUID]
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    study_id, instance = study_id_for(KEY.encode(), source.StudyInstanceUID, source.SOPInstanceUID)
    assert (settings.data_dir / "images" / "incoming" / study_id / f"{instance}.dcm").read_bytes() == chest


def test_success_only_after_the_store_returned(tmp_path):
    class FullDisk(LocalObjectStore):
        def put_bytes(self, *args, **kwargs):
            from shared.errors import StorageUnavailable

            raise StorageUnavailable("local store: ENOSPC")

    receiver = Receiver(FullDisk(tmp_path), "images", KEY.encode())
    with pytest.raises(Refused) as e:
        receiver.receive(cr_instance("explicit-le"))
    assert e.value.status == 0xA700
    stored = Receiver(LocalObjectStore(tmp_path), "images", KEY.encode()).receive(cr_instance("explicit-le"))
    assert (tmp_path / "images" / stored.key).is_file()


def test_no_success_when_the_acknowledgement_cannot_be_journalled(tmp_path):
    """The local gateway journals each instance before Success (radstream gateway's on_stored); a full disk there is
    out of resources, not a Success the restarted gateway would never finish. Another handing-on error stays Success."""
    import errno

    def journal_on_a_full_disk(received):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(Refused) as e:
        Receiver(LocalObjectStore(tmp_path), "images", KEY.encode(), on_stored=journal_on_a_full_disk).receive(cr_instance("explicit-le"))
    assert e.value.status == 0xA700

    def pipeline_bug(received):
        raise RuntimeError("the pipeline's own bug")

    stored = Receiver(LocalObjectStore(tmp_path / "other"), "images", KEY.encode(), on_stored=pipeline_bug).receive(
        cr_instance("explicit-le")
    )
    assert (tmp_path / "other" / "images" / stored.key).is_file()


def test_instances_of_one_study_share_the_pseudonym_prefix_and_differ_per_instance():
    study = generate_uid()
    a, _ = study_id_for(KEY.encode(), study, generate_uid())
    b, _ = study_id_for(KEY.encode(), study, generate_uid())
    other, _ = study_id_for(b"another-key-0123456789", study, generate_uid())
    assert a.split(".")[0] == b.split(".")[0] != other.split(".")[0] and a != b


def test_gateway_settings_come_from_the_environment_and_are_checked():
    from shared.errors import ConfigurationError

    settings = Settings.from_env(
        {
            "GATEWAY_DIMSE_PORT": "104",
            "GATEWAY_ALLOWED_CALLING_AES": "CR_ROOM_1, DX_ROOM_2,",
            "GATEWAY_MAX_PDU": "0",
            "GATEWAY_PSEUDONYM_KEY": KEY,
            "EXPORT_DICOM_PEER": "PACS@10.0.0.5:104",
        }
    )
    assert (settings.gateway_dimse_port, settings.gateway_allowed_ae_list, settings.gateway_max_pdu) == (104, ["CR_ROOM_1", "DX_ROOM_2"], 0)
    assert settings.export_dicom_peer == "PACS@10.0.0.5:104"
    assert KEY not in repr(settings), "the HMAC key is a secret"
    for variable, value in (("GATEWAY_AE_TITLE", "A" * 17), ("GATEWAY_DIMSE_PORT", "70000"), ("GATEWAY_PSEUDONYM_KEY", "short")):
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env({variable: value})
    with pytest.raises(ConfigurationError, match="GATEWAY_PSEUDONYM_KEY must be set"):
        Gateway(Settings(gateway_dimse_port=0, gateway_http_port=0))
