"""The DIMSE liveness probe: a C-ECHO to the gateway in this pod (`python -m services.gateway.probe`).

A TCP connect would only show that the port is open; a C-ECHO shows that associations are negotiated and
answered. Exit status 0: the echo succeeded. The probe's association counts against
GATEWAY_MAX_ASSOCIATIONS for the few milliseconds it lasts (a full gateway fails the probe only if it stays
full for the probe's whole failure threshold).
"""

from __future__ import annotations

import sys

from shared.settings import Settings


def echo(settings: Settings, host: str = "127.0.0.1", timeout_s: float = 5.0) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from shared.dimse import quiet_pynetdicom

    quiet_pynetdicom()
    ae = AE(ae_title="RADSTREAM-PROBE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, settings.gateway_dimse_port, ae_title=settings.gateway_ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0x0000
    finally:
        assoc.release()


def main() -> int:
    return 0 if echo(Settings.from_env()) else 1


if __name__ == "__main__":  # pragma: no cover - the pod's exec probe; the tests call echo()
    sys.exit(main())
