"""Settings: one validated model read from the environment at cold start; they choose the adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from shared.errors import ConfigurationError

# Width x height x channels (x frames) an image's header may declare: 100 million samples is ~7x a
# 4300 x 3500 detector's frame, and far below what would exhaust a stage's memory once decoded to float32.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "services" / "triton" / "model_repository"

# Setting -> environment variable. One table, so a deployment and a laptop differ by settings only.
ENVIRONMENT = {
    "backend": "RADSTREAM_BACKEND",
    "data_dir": "RADSTREAM_DATA_DIR",
    "images_bucket": "IMAGES_BUCKET",
    "results_bucket": "RESULTS_BUCKET",
    "telemetry_bucket": "TELEMETRY_BUCKET",
    "artifacts_bucket": "ARTIFACTS_BUCKET",
    "telemetry_stream": "TELEMETRY_STREAM_NAME",
    "telemetry_buffer_mb": "TELEMETRY_BUFFER_MB",
    "telemetry_buffer_s": "TELEMETRY_BUFFER_SECONDS",
    "event_bus": "EVENT_BUS_NAME",
    "triton_url": "TRITON_URL",
    "model_repository": "MODEL_REPOSITORY",
    "max_image_bytes": "MAX_IMAGE_BYTES",
    "max_image_pixels": "MAX_IMAGE_PIXELS",
    "onnx_threads": "ONNX_THREADS",
    "fault_injection": "RADSTREAM_FAULTS",
    # The DICOM gateway (services/gateway, docs/gateway.md)
    "gateway_ae_title": "GATEWAY_AE_TITLE",
    "gateway_host": "GATEWAY_HOST",
    "gateway_dimse_port": "GATEWAY_DIMSE_PORT",
    "gateway_http_port": "GATEWAY_HTTP_PORT",
    "gateway_allowed_calling_aes": "GATEWAY_ALLOWED_CALLING_AES",
    "gateway_max_pdu": "GATEWAY_MAX_PDU",
    "gateway_max_associations": "GATEWAY_MAX_ASSOCIATIONS",
    "gateway_acse_timeout_s": "GATEWAY_ACSE_TIMEOUT_S",
    "gateway_dimse_timeout_s": "GATEWAY_DIMSE_TIMEOUT_S",
    "gateway_network_timeout_s": "GATEWAY_NETWORK_TIMEOUT_S",
    "gateway_pseudonym_key": "GATEWAY_PSEUDONYM_KEY",
    "gateway_pseudonym_secret_arn": "GATEWAY_PSEUDONYM_SECRET_ARN",
    "gateway_tls_cert_file": "GATEWAY_TLS_CERT_FILE",
    "gateway_tls_key_file": "GATEWAY_TLS_KEY_FILE",
    "gateway_dicom_tls_port": "GATEWAY_DICOM_TLS_PORT",
    # Where DeliverResults sends each DICOM study's exports (services/export/deliver.py)
    "export_dicom_peer": "EXPORT_DICOM_PEER",
    "export_stow_url": "EXPORT_STOW_URL",
    "export_fhir_url": "EXPORT_FHIR_URL",
    # Critical-finding notifications (services/notify, docs/triage.md)
    "notify_mllp_peer": "NOTIFY_MLLP_PEER",
    "notify_rules": "NOTIFY_RULES",
    "notify_timeout_s": "NOTIFY_TIMEOUT_S",
}


class Settings(BaseModel):
    """Everything a stage needs to build its dependencies."""

    model_config = {"frozen": True}

    backend: Literal["local", "aws"] = "local"
    data_dir: Path = Path("radstream-data")
    images_bucket: str = "images"
    results_bucket: str = "results"
    telemetry_bucket: str = "telemetry"
    artifacts_bucket: str = "artifacts"
    telemetry_stream: str | None = None
    # The local sink's buffering hints, as Firehose's BufferingHints: a buffer is delivered into the lake as one object
    # per partition when it holds this many MB of records (uncompressed) or this many seconds after its first record.
    telemetry_buffer_mb: float = Field(default=64, gt=0)
    telemetry_buffer_s: float = Field(default=60, gt=0)
    event_bus: str | None = None
    # Empty: run the model repository in-process with ONNX Runtime. Set: a Triton server
    # (http://host:8000 or grpc://host:8001), locally or on EKS.
    triton_url: str | None = None
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    max_image_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    onnx_threads: int = Field(default=1, ge=0)
    # Local backend only, for the soak benchmark and fault tests: e.g. "enospc=0.02,throttle=0.02,timeout=0.01,seed=7"
    # makes the object store fail that share of its calls the way a full disk, a throttled S3 or a timeout does.
    fault_injection: str | None = None
    # The DICOM gateway: DIMSE C-ECHO/C-STORE SCP and DICOMweb STOW-RS. Port 0: a free port (tests, the CLI).
    gateway_ae_title: str = Field(default="RADSTREAM", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    gateway_host: str = "127.0.0.1"
    gateway_dimse_port: int = Field(default=11112, ge=0, le=65535)
    gateway_http_port: int = Field(default=8042, ge=0, le=65535)
    # Comma-separated calling AE titles allowed to associate, each optionally AE@host (an IP address, a CIDR network or
    # a host name): that AE only from there. Empty: any calling AE (a hospital network sets it). The called AE title
    # must always be gateway_ae_title. Each instance (C-STORE or a STOW-RS part) is held to max_image_bytes.
    gateway_allowed_calling_aes: str | None = Field(
        default=None, pattern=r"^\s*([ -+\--?A-\[\]-~]{1,16}(@[0-9A-Za-z.:/%_-]+)?\s*(,\s*|$))*$"
    )
    gateway_max_pdu: int = Field(default=65536, ge=0)  # 0: unlimited (PS3.8 allows it)
    gateway_max_associations: int = Field(default=10, ge=1)
    gateway_acse_timeout_s: float = Field(default=30.0, gt=0)
    gateway_dimse_timeout_s: float = Field(default=30.0, gt=0)
    gateway_network_timeout_s: float = Field(default=60.0, gt=0)
    # HMAC-SHA256 key that turns DICOM UIDs into study ids (never the UIDs themselves). Secret: not in repr.
    gateway_pseudonym_key: str | None = Field(default=None, repr=False, min_length=16)
    # In AWS the key is a Secrets Manager secret instead (its ARN): read once at start (services/gateway/secrets.py).
    gateway_pseudonym_secret_arn: str | None = None
    # TLS (docs/gateway.md, "On EKS"): with a certificate and key (PEM files, e.g. a mounted Kubernetes Secret),
    # STOW-RS is served over HTTPS, and DICOM TLS listens on gateway_dicom_tls_port (2762 is IANA's; 0: a free one).
    gateway_tls_cert_file: Path | None = None
    gateway_tls_key_file: Path | None = None
    gateway_dicom_tls_port: int | None = Field(default=None, ge=0, le=65535)
    # Where DeliverResults sends each DICOM study's SR and overlay: a DICOM node by C-STORE (AE_TITLE@host:port, calling
    # AE gateway_ae_title) and/or a STOW-RS URL (…/studies); and the FHIR bundle, POSTed to export_fhir_url (…/Bundle).
    export_dicom_peer: str | None = None
    export_stow_url: str | None = None
    export_fhir_url: str | None = None
    # The RIS that receives an HL7 v2.5.1 ORU^R01 per fired critical-finding rule, over MLLP (host:port); the rules file
    # (services/notify/critical_findings.json when unset); how long one connect or ACK may take.
    notify_mllp_peer: str | None = None
    notify_rules: Path | None = None
    notify_timeout_s: float = Field(default=10.0, gt=0)

    @property
    def gateway_allowed_ae_list(self) -> list[str]:
        return [ae.strip() for ae in (self.gateway_allowed_calling_aes or "").split(",") if ae.strip()]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {name: env[var] for name, var in ENVIRONMENT.items() if env.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            fields = ", ".join(f"{ENVIRONMENT[str(err['loc'][0])]} ({err['msg']})" for err in e.errors())
            raise ConfigurationError(f"invalid settings: {fields}") from e

    def to_env(self) -> dict[str, str]:
        return {var: str(getattr(self, name)) for name, var in ENVIRONMENT.items() if getattr(self, name) is not None}
