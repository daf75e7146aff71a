"""Synthetic phantoms: determinism, value range, findings where expected, boxes inside the image."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic.phantoms import (
    FINDINGS,
    LESION_LABELS,
    SENTENCE_BANK,
    Lesion,
    Phantom,
    generate_phantom,
    to_uint8,
    to_uint16,
)


def _ph(seed: int, size: int = 256, **kw) -> Phantom:
    return generate_phantom(np.random.default_rng(seed), size, **kw)


def test_names():
    assert FINDINGS == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    assert LESION_LABELS == ("nodule_mass", "focal_opacity")


def test_deterministic_for_a_seed():
    a, b = _ph(7, 320), _ph(7, 320)
    assert np.array_equal(a.image, b.image)
    assert a.findings == b.findings and a.lesions == b.lesions and a.report_sentences == b.report_sentences
    c = _ph(8, 320)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("size", [64, 256, 512, 1024])
def test_shape_dtype_range(size):
    p = _ph(1, size)
    assert p.image.shape == (size, size)
    assert p.image.dtype == np.float32
    assert float(p.image.min()) >= 0.0 and float(p.image.max()) <= 1.0
    assert np.isfinite(p.image).all()
    assert set(p.findings) == set(FINDINGS)
    # an X-ray-like picture: dark air outside the body, bright abdomen/mediastinum, darker lungs
    assert p.image.std() > 0.1


def test_random_findings_prevalence_and_lesion_count():
    counts = dict.fromkeys(FINDINGS, 0)
    n = 160
    n_lesions = []
    for i in range(n):
        p = _ph(1000 + i, 64)
        for k, v in p.findings.items():
            counts[k] += v
        n_lesions.append(len(p.lesions))
    for k, c in counts.items():
        assert 0.1 < c / n < 0.42, (k, c)
    assert set(n_lesions) <= {0, 1, 2} and len(set(n_lesions)) == 3


def test_explicit_findings_and_validation():
    p = _ph(3, findings=["Edema", "Cardiomegaly"], lesions=0)
    assert p.findings == {f: f in ("Edema", "Cardiomegaly") for f in FINDINGS}
    assert p.lesions == []
    with pytest.raises(ValueError):
        _ph(3, findings=["Pneumothorax"])


def _diff(seed: int, finding: str, size: int = 256) -> np.ndarray:
    base = _ph(seed, size, findings=[], lesions=0)
    with_f = _ph(seed, size, findings=[finding], lesions=0)
    return with_f.image - base.image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_findings_change_the_image_where_expected(seed):
    s = 256
    half = s // 2
    # Cardiomegaly: the heart shadow widens -> brighter in the lower middle, nothing at the apices
    d = _diff(seed, "Cardiomegaly")
    lower_mid = d[int(0.45 * s) : int(0.8 * s), int(0.25 * s) : int(0.8 * s)]
    assert lower_mid.mean() > 0.01
    assert np.abs(d[: int(0.3 * s)]).mean() < 0.25 * np.abs(lower_mid).mean()
    # Pleural effusion: brighter at the bases, not at the apices
    d = _diff(seed, "Pleural Effusion")
    assert d[int(0.55 * s) : int(0.85 * s)].mean() > 0.01
    assert np.abs(d[: int(0.35 * s)]).mean() < 1e-3
    # Edema: diffuse, bilateral haze in the lung fields
    d = _diff(seed, "Edema")
    rows = slice(int(0.3 * s), int(0.7 * s))
    assert d[rows, :half].mean() > 0.005 and d[rows, half:].mean() > 0.005
    # Consolidation: a patch in one lung only
    d = _diff(seed, "Consolidation")
    left, right = d[:, :half].mean(), d[:, half:].mean()
    assert max(left, right) > 0.004 and min(left, right) < 0.3 * max(left, right)
    # Atelectasis: a band at a base (plus a raised hemidiaphragm): lower half only
    d = _diff(seed, "Atelectasis")
    assert d[half:].mean() > 0.003
    assert np.abs(d[: int(0.3 * s)]).mean() < 1e-3
    # every finding changes only part of the picture
    for f in FINDINGS:
        assert (np.abs(_diff(seed, f)) > 0.02).mean() < 0.35, f


def test_sentences_match_findings():
    for i in range(40):
        p = _ph(500 + i, 64)
        assert all(t in SENTENCE_BANK for t in p.report_sentences)
        text = " ".join(p.report_sentences)
        assert ("Heart size is enlarged." in text) == p.findings["Cardiomegaly"]
        assert ("No pleural effusion." in text) != p.findings["Pleural Effusion"]
        assert ("No pulmonary edema." in text) != p.findings["Edema"]
        assert ("No focal consolidation." in text) != p.findings["Consolidation"]
        assert ("No atelectasis." in text) != p.findings["Atelectasis"]
        has_nodule = any(les.label == "nodule_mass" for les in p.lesions)
        assert ("No pulmonary nodule or mass." in text) != has_nodule
        normal = not any(p.findings.values()) and not p.lesions
        assert ("No acute cardiopulmonary abnormality." in text) == normal


@pytest.mark.parametrize("size", [128, 512, 1024])
def test_lesion_boxes_inside_image_and_over_the_lesion(size):
    for seed in range(6):
        base = _ph(seed, size, findings=[], lesions=0)
        p = _ph(seed, size, findings=[], lesions=3)
        assert len(p.lesions) == 3
        diff = p.image - base.image
        for les in p.lesions:
            assert isinstance(les, Lesion) and les.label in LESION_LABELS
            x1, y1, x2, y2 = les.box
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert 0.01 * size < x2 - x1 < 0.2 * size and 0.01 * size < y2 - y1 < 0.2 * size
            inside = diff[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
            assert inside.mean() > 0.02  # the lesion is brighter inside its box


def test_uint_helpers():
    img = np.array([[0.0, 0.5, 1.0, 1.2, -0.1]], np.float32)
    assert to_uint8(img).tolist() == [[0, 128, 255, 255, 0]]
    assert to_uint8(img).dtype == np.uint8
    u16 = to_uint16(img)
    assert u16.dtype == np.uint16 and u16.tolist() == [[0, 32768, 65535, 65535, 0]]
