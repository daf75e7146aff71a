"""The gateway's pseudonym key from Secrets Manager (moto's server over HTTP): fetched once at start through
boto3, used for the study ids of what it stores in S3, and every failure a clear error that names the secret,
never its value."""

from __future__ import annotations

import hashlib
import hmac
import io

import pydicom
import pytest

from shared.acceptance import CR_IMAGE_STORAGE
from services.gateway.secrets import pseudonym_key_value
from services.gateway.server import Gateway
from synthetic.instances import cr_instance
from synthetic.peers import send_c_store
from shared.errors import ConfigurationError
from shared.settings import Settings

SECRET_KEY = "key-from-secrets-manager-5b7e0c1d9a"
ENV_KEY = "a-different-key-from-the-environment"


@pytest.fixture
def secret_arn(emulator) -> str:
    return emulator.client("secretsmanager").create_secret(Name="radstream/gateway/pseudonym-key", SecretString=SECRET_KEY)["ARN"]


def test_the_gateway_hashes_with_the_secret_and_stores_in_s3(emulator, bucket, secret_arn, tmp_path):
    calls = []
    settings = Settings.from_env(
        {
            "RADSTREAM_BACKEND": "aws",
            "IMAGES_BUCKET": bucket,
            "GATEWAY_DIMSE_PORT": "0",
            "GATEWAY_HTTP_PORT": "0",
            "GATEWAY_PSEUDONYM_SECRET_ARN": secret_arn,
            "GATEWAY_PSEUDONYM_KEY": ENV_KEY,  # the secret wins
        }
    )
    data = cr_instance("explicit-le")
    source = pydicom.dcmread(io.BytesIO(data))
    with Gateway(settings, on_stored=calls.append) as gateway:
        assert source.SOPClassUID == CR_IMAGE_STORAGE
        status = send_c_store(gateway.dimse.port, gateway.ae_title, source, calling_ae="MODALITY")
    assert int(status.Status) == 0x0000
    expected = hmac.new(SECRET_KEY.encode(), source.StudyInstanceUID.encode(), hashlib.sha256).hexdigest()[:20]
    (received,) = calls
    assert received.study_id.split(".")[0] == expected
    stored = pydicom.dcmread(io.BytesIO(emulator.client("s3").get_object(Bucket=bucket, Key=received.key)["Body"].read()))
    assert (stored.SOPInstanceUID, stored.PixelData) == (source.SOPInstanceUID, source.PixelData)


def test_a_missing_or_unusable_secret_stops_the_gateway_naming_the_secret(emulator, secret_arn):
    client = emulator.client("secretsmanager")
    missing = secret_arn.rsplit(":", 1)[0] + ":radstream/gateway/absent-AbCdEf"
    with pytest.raises(ConfigurationError) as e:
        pseudonym_key_value(Settings(gateway_pseudonym_secret_arn=missing))
    assert "absent" in e.value.message and "ResourceNotFoundException" in e.value.message
    short = client.create_secret(Name="radstream/gateway/short", SecretString="too-short")["ARN"]
    with pytest.raises(ConfigurationError) as e:
        pseudonym_key_value(Settings(gateway_pseudonym_secret_arn=short))
    assert "too-short" not in e.value.message and "shorter than 16" in e.value.message
    binary = client.create_secret(Name="radstream/gateway/binary", SecretBinary=b"\x00" * 32)["ARN"]
    with pytest.raises(ConfigurationError, match="no SecretString"):
        pseudonym_key_value(Settings(gateway_pseudonym_secret_arn=binary))
    # Without an ARN the variable is the key, and Secrets Manager is not asked.
    assert pseudonym_key_value(Settings(gateway_pseudonym_key=ENV_KEY), client=object()) == ENV_KEY


def test_the_key_is_read_once_at_start(emulator, bucket, secret_arn):
    """A later change of the secret does not change the running gateway's study ids (a rotation is a restart)."""
    calls = []
    settings = Settings(
        backend="aws", images_bucket=bucket, gateway_dimse_port=0, gateway_http_port=0, gateway_pseudonym_secret_arn=secret_arn
    )
    with Gateway(settings, on_stored=calls.append) as gateway:
        emulator.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString="rotated-key-0123456789abcdef")
        data = cr_instance("explicit-le")
        gateway.receiver.receive(data)
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert (
        calls[0].study_id.split(".")[0] == hmac.new(SECRET_KEY.encode(), source.StudyInstanceUID.encode(), hashlib.sha256).hexdigest()[:20]
    )
