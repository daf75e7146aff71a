"""Classes the conformance corpus found after the intensity rule landed: files a reference decoder reads that the
pipeline refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
from pydicom.data import get_testdata_file

from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset
from shared.pixels import decode_dicom, decode_raster


def test_12_bit_jpeg_extended_that_libjpeg_refuses_is_read_by_gdcm(tmp_path: Path):
    """pydicom's own JPEG-lossy.dcm: libjpeg says 'scan start must be zero and scan stop must be 63'; GDCM reads it."""
    source = Path(get_testdata_file("JPEG-lossy.dcm"))
    decoded = decode_dicom(source.read_bytes(), "s")
    raw = tmp_path / "raw.dcm"
    subprocess.run(["gdcmconv", "--raw", str(source), str(raw)], check=True, timeout=60, capture_output=True)
    reference = decode_dicom(raw.read_bytes(), "s")  # GDCM's own decompression, read uncompressed
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    assert decoded.pixels.max() > decoded.pixels.min()


def test_a_window_that_leaves_nothing_to_read_is_set_aside():
    values = np.tile(np.arange(1000, 1256, dtype=np.uint16), (256, 1))
    ds = dicom_dataset(values, bits_stored=12, WindowCenter=30, WindowWidth=100)  # every pixel above the window
    decoded = decode_dicom(dataset_bytes(ds), "s")
    assert decoded.intensity_rule.endswith("-voi-saturated")
    assert decoded.pixels.min() == 0.0 and decoded.pixels.max() == 1.0
    useful = decode_dicom(dataset_bytes(dicom_dataset(values, bits_stored=12, WindowCenter=1128, WindowWidth=256)), "s")
    assert useful.intensity_rule == "dicom-window"  # a window that shows something still wins


def test_a_small_structure_off_the_sampling_grid_is_still_the_picture():
    image = np.full((2048, 2048), 1000, np.uint16)
    image[1003:1006, 1001:1007] = np.arange(1500, 4500, 500, dtype=np.uint16)  # off every 8th row: the grid never sees it
    ok, png = cv2.imencode(".png", image)
    assert ok
    decoded = decode_raster(png.tobytes(), "s")
    # Scaled over its real range, not cut to black-or-white around the one value the grid saw.
    np.testing.assert_allclose(decoded.pixels[1003, 1001:1007], (np.arange(1500, 4500, 500) - 1000) / 3000, atol=1e-6)
