"""What the two DICOM network ends share (the gateway's SCP, export's C-STORE SCU): pynetdicom's logs kept to warnings."""

from __future__ import annotations

import logging


def quiet_pynetdicom() -> None:
    """pynetdicom's DEBUG lines print each request's Affected SOP Instance UID and its INFO/DEBUG PDU dumps the
    peers' details: identifiers in logs (docs/phi.md). Its warnings and errors (no data set values) still log."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
