"""A local Orthanc (Debian's `orthanc` and `orthanc-dicomweb`, `make orthanc`) as the hospital's PACS.

Started on loopback ports with a generated configuration in its own folder (storage and index there too, so a
restart keeps what it stored); the tests and `radstream demo --pacs` use it. It fails with a clear message when
Orthanc is not installed or does not answer in time; it never falls back to anything else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# free_port is re-exported: the tests and the bench take it from here too.
from radstream.triton_server import free_port, wait_until_ready
from shared.errors import ConfigurationError

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """One Orthanc process. `modalities` names the DICOM nodes it may push to: {name: (AE title, host, port)}."""

    def __init__(
        self,
        folder: Path,
        dimse_port: int | None = None,
        http_port: int | None = None,
        *,
        ae_title: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        start_timeout_s: float = 60,
    ) -> None:
        binary = shutil.which("Orthanc")
        if not binary:
            raise ConfigurationError("Orthanc (Debian package orthanc) is not installed: `make orthanc` installs it")
        self.binary: str = binary
        if not DICOMWEB_PLUGIN.is_file():
            raise ConfigurationError("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is missing: `make orthanc` installs it")
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.dimse_port, self.http_port = dimse_port or free_port(), http_port or free_port()
        self.modalities = dict(modalities or {})
        self.start_timeout_s = start_timeout_s
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self._log: Any = None
        self.start()

    @property
    def peer(self) -> str:
        """This PACS as a C-STORE destination (EXPORT_DICOM_PEER)."""
        return f"{self.ae_title}@127.0.0.1:{self.dimse_port}"

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web/studies"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "radstream-local-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dimse_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": True,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self._log = open(self.folder / "orthanc.log", "a")
        self.process = subprocess.Popen([self.binary, str(self.folder / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            code = wait_until_ready(self.process, self.answers, self.start_timeout_s)
        except TimeoutError:
            self.stop()
            raise ConfigurationError(f"Orthanc did not answer within {self.start_timeout_s:.0f} s: {self.log_tail()}") from None
        if code is not None:
            self.stop()
            raise ConfigurationError(f"Orthanc exited with {code}: {self.log_tail()}")

    def answers(self) -> bool:
        try:
            self.get("/system")
        except OSError:
            return False
        return True

    def log_tail(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def get(self, path: str, accept: str | None = None) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def post(self, path: str, body: bytes) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def qido_study(self, study_uid: str) -> tuple[list[dict], list[dict]]:
        """QIDO-RS: the study found by its StudyInstanceUID (GET /dicom-web/studies?StudyInstanceUID=…), and its series."""
        studies = (
            self.get("/dicom-web/studies?" + urllib.parse.urlencode({"StudyInstanceUID": study_uid}), accept="application/dicom+json") or []
        )
        series = self.get(f"/dicom-web/studies/{urllib.parse.quote(study_uid)}/series", accept="application/dicom+json") if studies else []
        return studies, series or []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dicom_json_value(item: dict, tag: str) -> Any:
    """A DICOM JSON model attribute's first value (PS3.18 F.2), e.g. tag "0020000E" for SeriesInstanceUID."""
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]
