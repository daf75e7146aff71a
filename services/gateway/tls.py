"""TLS for the gateway's listeners: one server context from a PEM certificate and key (docs/gateway.md, "On EKS").

In EKS the files come from a Kubernetes Secret mounted read-only (cert-manager or the hospital's PKI issues
it); the pod terminates TLS itself, so DICOMweb and DICOM TLS are encrypted up to the process that handles
the pixels, and the NLB passes TCP through with the client's address kept (the NetworkPolicy can then name
the hospital's CIDR). TLS 1.2 is the floor (PS3.15 B.9, BCP 195).
"""

from __future__ import annotations

import ssl

from shared.errors import ConfigurationError
from shared.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """A server-side context when both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE are set, else None."""
    cert, key = settings.gateway_tls_cert_file, settings.gateway_tls_key_file
    if cert is None and key is None:
        if settings.gateway_dicom_tls_port is not None:
            raise ConfigurationError("GATEWAY_DICOM_TLS_PORT needs GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
        return None
    if cert is None or key is None:
        raise ConfigurationError("TLS needs both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigurationError(f"the TLS certificate {cert} or key {key} cannot be loaded ({type(e).__name__})") from e
    return context
