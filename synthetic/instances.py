"""DICOM instances as a modality sends them to the gateway: a chest CR phantom with a patient module, in a transfer syntax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from shared.acceptance import CR_IMAGE_STORAGE
from shared.settings import Settings
from synthetic.phantoms import generate_phantom
from synthetic.transfer_syntaxes import SYNTAXES, dicom_dataset, encode, stored_values

# The patient's values the hospital sends: the tests look for them where no patient value may go.
NAME, PATIENT_ID = "GATEWAY^TESTPATIENT", "MRN-GW-4711"


def cr_instance(
    syntax: str = "jpeg-ls-lossless", body_part: str = "CHEST", study_uid: str | None = None, seed: int = 3, size: int = 320
) -> bytes:
    image = generate_phantom(np.random.default_rng(seed), size=size).image
    chosen = SYNTAXES[syntax]
    ds = dicom_dataset(
        stored_values(image, chosen.bits),
        bits_stored=chosen.bits,
        SOPClassUID=CR_IMAGE_STORAGE,
        Modality="CR",
        BodyPartExamined=body_part,
        StudyInstanceUID=study_uid or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientName=NAME,
        PatientID=PATIENT_ID,
        PatientBirthDate="19600101",
        PatientSex="F",
        AccessionNumber="ACC-GW-1",
        StudyDate="20260101",
        StudyTime="101010",
        ReferringPhysicianName="",
        StudyID="1",
        SeriesNumber=1,
        InstanceNumber=1,
    )
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    return encode(ds, chosen)


# The gateway's HMAC key in the tests (GATEWAY_PSEUDONYM_KEY): the study ids they expect are keyed with it.
KEY = "test-pseudonym-key-0123456789abcdef"


def gateway_settings(data_dir: Path, **update: Any) -> Settings:
    """A gateway on free loopback ports (0) with the tests' key, and deadlines loose enough for a loaded machine."""
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "gateway_dimse_port": 0,
        "gateway_http_port": 0,
        "gateway_pseudonym_key": KEY,
        "gateway_dimse_timeout_s": 20,
        "gateway_acse_timeout_s": 20,
        "gateway_network_timeout_s": 30,
    }
    return Settings(**(fields | update))
