"""TLS on the gateway (a certificate as a mounted Secret would give it): STOW-RS over HTTPS, DICOM TLS on its own
port, GET /health for the probes, and the C-ECHO liveness probe. Real handshakes over loopback."""

from __future__ import annotations

import datetime
import io
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from shared.acceptance import CR_IMAGE_STORAGE
from services.gateway.probe import echo
from services.gateway.server import Gateway
from synthetic.instances import KEY, cr_instance
from services.gateway.tls import server_context
from shared.errors import ConfigurationError
from shared.settings import Settings


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.radstream.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = True
    return context


@pytest.fixture
def tls_settings(tmp_path: Path) -> Settings:
    cert, key = self_signed(tmp_path)
    return Settings(
        data_dir=tmp_path / "data",
        gateway_dimse_port=0,
        gateway_http_port=0,
        gateway_dicom_tls_port=0,
        gateway_pseudonym_key=KEY,
        gateway_tls_cert_file=cert,
        gateway_tls_key_file=key,
        gateway_allowed_calling_aes="MODALITY,RADSTREAM-PROBE",
        gateway_network_timeout_s=10,
    )


def test_stow_over_https_and_health(tls_settings):
    context = client_context(tls_settings.gateway_tls_cert_file)
    data = cr_instance("explicit-le")
    boundary = "tls-boundary-1"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    with Gateway(tls_settings) as gateway:
        assert gateway.stow.url.startswith("https://")
        base = f"https://localhost:{gateway.stow.port}"
        with urllib.request.urlopen(f"{base}/health", timeout=10, context=context) as response:
            assert (response.status, response.read()) == (200, b"ok")
        request = urllib.request.Request(
            f"{base}/studies",
            data=body,
            method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            assert response.status == 200
            answer = json.loads(response.read())
        assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID]
        # Plain HTTP to the TLS port gets no answer, and the server keeps serving afterwards.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{gateway.stow.port}/health", timeout=10).read()
        with urllib.request.urlopen(f"{base}/health", timeout=10, context=context) as response:
            assert response.status == 200
        # Once the DIMSE listener is gone, the health check says so (the pod is taken out of the load balancer).
        gateway.dimse.close()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/health", timeout=10, context=context)
        assert e.value.code == 503


def test_dicom_tls_echo_and_store_and_the_plain_port_probe(tls_settings):
    data = cr_instance("explicit-le")
    source = pydicom.dcmread(io.BytesIO(data))
    with Gateway(tls_settings) as gateway:
        assert gateway.dimse.tls_port and gateway.dimse.tls_port != gateway.dimse.port
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(Verification)
        scu.add_requested_context(CR_IMAGE_STORAGE, source.file_meta.TransferSyntaxUID)
        tls = (client_context(tls_settings.gateway_tls_cert_file), "localhost")
        assoc = scu.associate("127.0.0.1", gateway.dimse.tls_port, ae_title=gateway.ae_title, tls_args=tls)
        assert assoc.is_established
        try:
            assert int(assoc.send_c_echo().Status) == 0
            assert int(assoc.send_c_store(source).Status) == 0
        finally:
            assoc.release()
        # A client that does not trust the certificate gets no association.
        untrusted = scu.associate(
            "127.0.0.1", gateway.dimse.tls_port, ae_title=gateway.ae_title, tls_args=(ssl.create_default_context(), "localhost")
        )
        assert not untrusted.is_established
        # The pod's liveness probe: a C-ECHO on the plain DIMSE port, as its allowed calling AE.
        assert echo(tls_settings.model_copy(update={"gateway_dimse_port": gateway.dimse.port}))
    stored = list((tls_settings.data_dir / "images" / "incoming").rglob("*.dcm"))
    assert len(stored) == 1 and pydicom.dcmread(stored[0]).SOPInstanceUID == source.SOPInstanceUID
    # With the gateway gone the probe fails.
    assert not echo(tls_settings.model_copy(update={"gateway_dimse_port": gateway.dimse.port}), timeout_s=2)


def test_tls_settings_must_come_in_pairs(tmp_path):
    cert, key = self_signed(tmp_path)
    assert server_context(Settings()) is None
    with pytest.raises(ConfigurationError, match="both"):
        server_context(Settings(gateway_tls_cert_file=cert))
    with pytest.raises(ConfigurationError, match="GATEWAY_DICOM_TLS_PORT needs"):
        server_context(Settings(gateway_dicom_tls_port=2762))
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        server_context(Settings(gateway_tls_cert_file=cert, gateway_tls_key_file=tmp_path / "absent.key"))
    context = server_context(Settings(gateway_tls_cert_file=cert, gateway_tls_key_file=key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
