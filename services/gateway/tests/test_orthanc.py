"""Orthanc (Debian's PACS, started here on free loopback ports) as the hospital: it pushes a CR to the gateway
by C-STORE, and gets the SR back, by C-STORE and by STOW-RS (its DICOMweb plugin), filed under the source's study.
Orthanc that cannot start fails the test (`make orthanc` installs it)."""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from radstream.runtime import LocalRuntime
from services.gateway.deliver import Deliverer
from services.gateway.server import Gateway, LocalPipeline
from services.gateway.tests.test_gateway import KEY, cr_instance
from shared.errors import DeliveryUnavailable
from shared.settings import Settings

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path, gateway_port: int, dimse_port: int, http_port: int) -> None:
        binary = shutil.which("Orthanc")
        assert binary, "Orthanc (Debian package orthanc) is not installed: `make orthanc` installs it"
        assert DICOMWEB_PLUGIN.is_file(), "Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is missing: `make orthanc`"
        self.dimse_port, self.http_port = dimse_port, http_port
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "radstream-test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "DicomAet": "ORTHANC", "DicomPort": self.dimse_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": True,
            "DicomModalities": {"radstream": ["RADSTREAM", "127.0.0.1", gateway_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"Orthanc exited with {self.process.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Orthanc did not answer within 60 s: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes):
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def test_orthanc_pushes_a_cr_and_gets_the_sr_back_filed_with_its_study(tmp_path):
    data = cr_instance("jpeg-ls-lossless")
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    pacs_dimse, pacs_http = free_port(), free_port()
    settings = Settings(data_dir=tmp_path / "data", gateway_dimse_port=0, gateway_http_port=0, gateway_pseudonym_key=KEY,
                        gateway_pacs=f"ORTHANC@127.0.0.1:{pacs_dimse}",
                        gateway_pacs_stow_url=f"http://127.0.0.1:{pacs_http}/dicom-web/studies")
    with LocalRuntime(settings, workers=1) as runtime:
        pipeline = LocalPipeline(runtime, workers=1, deliverer=Deliverer(settings, runtime.store))
        with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
            # Orthanc's ports were chosen before the gateway's settings (they name it); the gateway's port is its modality.
            orthanc = Orthanc(tmp_path / "orthanc", gateway.dimse.port, pacs_dimse, pacs_http)
            try:
                instance = orthanc.post("/instances", data)
                # The PACS pushes the CR to the gateway (Orthanc's C-STORE SCU).
                pushed = orthanc.post("/modalities/radstream/store", instance["ID"].encode())
                assert pushed.get("FailedInstancesCount", 0) == 0, pushed
                (future,) = pipeline.futures.values()
                outcome = future.result(timeout=300)
                pipeline.close()
                assert outcome.status == "succeeded", outcome.message
                (delivered,) = pipeline.deliveries.values()
                assert delivered == [f"dimse:ORTHANC@127.0.0.1:{pacs_dimse}", f"stow:{settings.gateway_pacs_stow_url}"], delivered
                # One study in the PACS: the CR and the SR (sent twice, the same SOP instance: stored once).
                (study,) = orthanc.get("/studies")
                tags = orthanc.get(f"/studies/{study}")["MainDicomTags"]
                assert tags["StudyInstanceUID"] == source.StudyInstanceUID
                instances = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
                assert sorted(i["SOPClassUID"] for i in instances) == sorted([source.SOPClassUID, COMPREHENSIVE_3D_SR])
                sr = next(i for i in instances if i["SOPClassUID"] == COMPREHENSIVE_3D_SR)
                assert (sr["StudyInstanceUID"], sr["PatientID"], sr["Modality"]) == (source.StudyInstanceUID, source.PatientID, "SR")
            finally:
                orthanc.stop()
    # With the PACS gone, delivery is a retryable failure, never a silent success.
    with LocalRuntime(settings, workers=1) as runtime, pytest.raises(DeliveryUnavailable):
        Deliverer(settings.model_copy(update={"gateway_pacs_stow_url": None}), runtime.store).deliver(outcome.study_id)

