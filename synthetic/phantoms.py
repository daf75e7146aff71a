"""Synthetic chest-X-ray-like phantoms with known ground truth.

No real chest X-ray data can be downloaded where RadStream is built, so the reference models are
trained and tested on phantoms made here: a PA-view-like grayscale image (dark lung fields,
mediastinum and heart silhouette, spine, ribs, clavicles, diaphragm domes, soft tissue, exposure
and noise variation) with findings injected at known places:

- Atelectasis: a band-like (plate) opacity at a lung base plus volume loss (elevated hemidiaphragm).
- Cardiomegaly: an enlarged heart shadow (cardiothoracic ratio ~0.55-0.68 instead of ~0.38-0.47).
- Consolidation: a large patchy opacity in one lung.
- Edema: bilateral perihilar ("butterfly") haze with blotchy texture.
- Pleural Effusion: a fluid level at a costophrenic angle with a meniscus rising laterally.

and localized lesions with bounding boxes (pixels, x1, y1, x2, y2):

- ``nodule_mass``: a round dense blob.
- ``focal_opacity``: an irregular, fainter patch.

Pure numpy + OpenCV, no torch. A phantom is fully determined by the ``numpy.random.Generator``
state it is given. Anatomy is drawn first and every finding draws its parameters from its own child
generator whether or not it is present, so the same seed with and without a finding gives the same
patient, differing only where the finding is. These are not medical images and carry no clinical
meaning; they exist to exercise the pipeline and the models' wiring end to end.

"Right"/"left" follow the radiological convention: the patient's right is on the image's left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence

import cv2
import numpy as np

FINDINGS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
LESION_LABELS: tuple[str, ...] = ("nodule_mass", "focal_opacity")

# The fixed bank the phantoms' report sentences are drawn from (the report encoder's text side).
NORMAL_SENTENCE = "No acute cardiopulmonary abnormality."
SENTENCE_BANK: tuple[str, ...] = (
    NORMAL_SENTENCE,
    "Heart size is normal.",
    "Heart size is enlarged.",
    "No pleural effusion.",
    "Small right pleural effusion.",
    "Small left pleural effusion.",
    "Bilateral pleural effusions.",
    "No pulmonary edema.",
    "Bilateral perihilar haziness consistent with pulmonary edema.",
    "No focal consolidation.",
    "Consolidation in the right lung.",
    "Consolidation in the left lung.",
    "No atelectasis.",
    "Band-like atelectasis at the right lung base.",
    "Band-like atelectasis at the left lung base.",
    "No pulmonary nodule or mass.",
    "Nodule or mass in the right lung.",
    "Nodule or mass in the left lung.",
    "Focal opacity in the right lung.",
    "Focal opacity in the left lung.",
)

# What each bank sentence says about the models' decisions: the findings (classifier labels) and lesions
# (detector labels) it asserts and those it negates. Written from the rules generate_phantom() writes
# reports by (tests/test_sentence_tags.py checks them against phantoms' ground truth), and carried into
# the report encoder's sentence_bank.json so the store stage can keep the draft report consistent with
# the models' decisions (docs/models.md).
SENTENCE_TAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    NORMAL_SENTENCE: ((), FINDINGS + LESION_LABELS),
    "Heart size is normal.": ((), ("Cardiomegaly",)),
    "Heart size is enlarged.": (("Cardiomegaly",), ()),
    "No pleural effusion.": ((), ("Pleural Effusion",)),
    "Small right pleural effusion.": (("Pleural Effusion",), ()),
    "Small left pleural effusion.": (("Pleural Effusion",), ()),
    "Bilateral pleural effusions.": (("Pleural Effusion",), ()),
    "No pulmonary edema.": ((), ("Edema",)),
    "Bilateral perihilar haziness consistent with pulmonary edema.": (("Edema",), ()),
    "No focal consolidation.": ((), ("Consolidation",)),
    "Consolidation in the right lung.": (("Consolidation",), ()),
    "Consolidation in the left lung.": (("Consolidation",), ()),
    "No atelectasis.": ((), ("Atelectasis",)),
    "Band-like atelectasis at the right lung base.": (("Atelectasis",), ()),
    "Band-like atelectasis at the left lung base.": (("Atelectasis",), ()),
    "No pulmonary nodule or mass.": ((), ("nodule_mass",)),
    "Nodule or mass in the right lung.": (("nodule_mass",), ()),
    "Nodule or mass in the left lung.": (("nodule_mass",), ()),
    "Focal opacity in the right lung.": (("focal_opacity",), ()),
    "Focal opacity in the left lung.": (("focal_opacity",), ()),
}
assert set(SENTENCE_TAGS) == set(SENTENCE_BANK)


def sentence_bank_entry(text: str, embedding) -> dict:
    """One entry of sentence_bank.json: the text, its embedding, and what it asserts and negates."""
    asserts, negates = SENTENCE_TAGS[text]
    return {"text": text, "asserts": list(asserts), "negates": list(negates), "embedding": [round(float(v), 6) for v in embedding]}


_PREVALENCE = 0.25
_MAX_WORK = 256  # anatomy is rendered at most at this resolution, then resized; noise is full-size


@dataclass(frozen=True)
class Lesion:
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the phantom image


@dataclass
class Phantom:
    image: np.ndarray  # float32, HxW, values in [0, 1]
    findings: dict[str, bool]
    lesions: list[Lesion] = field(default_factory=list)
    report_sentences: list[str] = field(default_factory=list)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (for 8-bit PNG)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint16 (for 16-bit PNG)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 65535.0), 0, 65535).astype(np.uint16)


def _side_word(side: int) -> str:
    # side -1: image left = patient's right; side +1: image right = patient's left
    return "right" if side < 0 else "left"


def _lowfreq(rng: np.random.Generator, cells: int, w: int) -> np.ndarray:
    """Smooth noise in about [-1, 1], ``cells`` x ``cells`` control points resized to w x w."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, w), interpolation=cv2.INTER_CUBIC)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REPLICATE)


def _pts(points: np.ndarray, w: int) -> np.ndarray:
    """Normalised (u, v) points -> fixed-point int32 pixel coords for cv2 drawing with shift=4."""
    return np.rint(points * w * 16.0).astype(np.int32).reshape(-1, 1, 2)


def _validate_findings(findings: Sequence[str]) -> set[str]:
    chosen = set(findings)
    unknown = chosen - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected a subset of {FINDINGS}")
    return chosen


def generate_phantom(
    rng: np.random.Generator,
    size: int = 512,
    findings: Sequence[str] | None = None,
    lesions: int | None = None,
) -> Phantom:
    """One phantom of ``size`` x ``size`` pixels.

    ``findings``: the findings present (others absent); None picks each with ~25% prevalence.
    ``lesions``: how many localized lesions (label drawn at random); None picks 0-2.
    """
    if size < 32:
        raise ValueError("size must be at least 32")
    if lesions is not None and not 0 <= lesions <= 6:
        raise ValueError("lesions must be between 0 and 6")

    # --- what is present (consumes the caller's generator in a fixed order) ---------------------
    if findings is None:
        present = {name for name in FINDINGS if rng.random() < _PREVALENCE}
    else:
        present = _validate_findings(findings)
        rng.random(len(FINDINGS))  # keep the stream aligned with the random-findings case
    n_lesions = int(rng.integers(0, 3)) if lesions is None else int(lesions)
    if lesions is not None:
        rng.integers(0, 3)
    seeds = rng.integers(0, 2**63 - 1, size=10)
    g_anat, g_ate, g_card, g_cons, g_edema, g_eff, g_les, g_tex, g_noise, g_glob = (np.random.default_rng(int(s)) for s in seeds)

    w = min(size, _MAX_WORK)
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    v = ((np.arange(w, dtype=np.float32) + 0.5) / w)[:, None]
    edge_sigma = 0.005 * w

    # --- anatomy parameters (all normalised to the image side) ----------------------------------
    a = g_anat
    zoom = a.uniform(0.88, 1.08)
    cx = 0.5 + a.normal(0.0, 0.015)
    cy_shift = a.normal(0.0, 0.02)
    tw = a.uniform(0.30, 0.36) * zoom  # thoracic half width
    lt = 0.5 + (a.uniform(0.08, 0.14) - 0.5) * zoom + cy_shift  # lung apex
    lb = 0.5 + (a.uniform(0.70, 0.78) - 0.5) * zoom + cy_shift  # costophrenic level
    mw = a.uniform(0.05, 0.068) * zoom  # mediastinum half width
    dome_h = [a.uniform(0.05, 0.09) * zoom, a.uniform(0.04, 0.08) * zoom]  # [right(img left), left]
    dome_h[0] += 0.015 * zoom  # right hemidiaphragm sits higher
    ctr_normal = a.uniform(0.38, 0.47)
    ctr_enlarged = a.uniform(0.56, 0.68)
    heart_hh = a.uniform(0.11, 0.14) * zoom
    heart_dx = a.uniform(0.2, 0.35)
    body_extra = a.uniform(0.05, 0.11) * zoom
    n_ribs = int(a.integers(9, 11))
    rib_phase = a.uniform(-0.01, 0.01)
    rib_amp = a.uniform(0.07, 0.12)
    lung_air = a.uniform(0.34, 0.44)
    tissue = a.uniform(0.55, 0.66)

    # atelectasis: volume loss raises that side's hemidiaphragm
    ate_side = -1 if g_ate.random() < 0.5 else 1
    ate_raise = g_ate.uniform(0.02, 0.045) * zoom
    ate_params = g_ate.uniform(size=6)
    if "Atelectasis" in present:
        dome_h[0 if ate_side < 0 else 1] += ate_raise

    ctr = ctr_enlarged if "Cardiomegaly" in present else ctr_normal
    g_card.random()  # reserved: keeps child streams independent of future heart details

    # --- masks (composed sharp, blurred once: blurring is linear) ------------------------------
    body_bin = ((u - cx) / (tw + body_extra)) ** 2 + ((v - 0.62) / 0.66) ** 2 < 1.0

    t = np.clip((v - lt) / (lb - lt), 0.0, 1.0)
    prof = np.sin(np.pi / 2 * np.minimum(1.0, t / 0.55)) ** 0.7 * (0.9 + 0.1 * t)  # (w,1)
    d = u - cx  # (1,w)
    ad = np.abs(d)
    tw_prof = tw * prof
    hemi = []
    domes = []
    for i, s in enumerate((-1, 1)):
        ds = s * d
        dome_c = (mw + tw) * 0.5
        dome_w = (tw - mw) * 0.62
        dome = lb - dome_h[i] * np.clip(1.0 - ((ds - dome_c) / dome_w) ** 2, 0.0, 1.0)  # (1,w)
        domes.append(dome)
        cols = ds > mw  # (1,w)
        hemi.append(cols & (ds < tw_prof) & (v > lt) & (v < dome))

    hw = ctr * tw
    hcx = cx + heart_dx * hw
    hcy = lb - max(dome_h) * 0.8 - 0.45 * heart_hh
    heart_bin = ((u - hcx) / hw) ** 2 + ((v - hcy) / heart_hh) ** 2 < 1.0
    lung_bin = (hemi[0] | hemi[1]) & ~heart_bin
    lung = _blur(lung_bin.astype(np.float32), edge_sigma)

    below_dome = v > np.minimum(np.minimum(domes[0], domes[1]), lb)
    medi = (ad < mw * (0.85 + 0.3 * t)) & (v < lb + 0.05)
    spine = ad < 0.032 * zoom
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (v - lt) / (0.045 * zoom))

    # ribs and clavicles, drawn antialiased into one overlay
    bones = np.zeros((w, w), np.uint8)
    thick = max(1, int(round(0.014 * w * zoom)))
    ks = np.linspace(0.0, 1.1, 16)
    spacing = (lb - lt) / (n_ribs - 1.5)
    rib_lines = []
    for s in (-1, 1):
        for r in range(n_ribs):
            v0 = lt - 0.02 + rib_phase + r * spacing * 0.92
            rib_lines.append(_pts(np.stack([cx + s * (0.03 + tw * ks), v0 - 0.03 * np.sin(np.pi * ks * 0.8) + rib_amp * ks**2], 1), w))
        clav = np.array([[cx + s * 0.05, lt + 0.02], [cx + s * 0.18, lt - 0.005], [cx + s * 0.3, lt - 0.03]])
        cv2.polylines(bones, [_pts(clav, w)], False, 255, int(thick * 1.3) + 1, cv2.LINE_AA, shift=4)
    cv2.polylines(bones, rib_lines, False, 150, thick, cv2.LINE_AA, shift=4)

    # lung texture (vascular markings stand-in)
    tex = _lowfreq(g_tex, 20, w)

    body_f = body_bin.astype(np.float32)
    dens = tissue * body_f
    dens -= lung_air * lung_bin * (1.0 - 0.15 * t)
    dens += body_f * (0.08 * medi + 0.06 * below_dome + (0.09 + 0.02 * vert) * spine + (0.11 / 255.0) * bones)
    dens += 0.07 * heart_bin
    dens = _blur(dens.astype(np.float32), edge_sigma)
    body = _blur(body_f, edge_sigma)
    dens += 0.03 * tex * lung

    # --- findings -----------------------------------------------------------------------------
    sentences: list[str] = []
    # Atelectasis: band at a lung base on ate_side
    if "Atelectasis" in present:
        p = ate_params
        s = ate_side
        bu = cx + s * (mw + (tw - mw) * (0.3 + 0.35 * p[0]))
        bv = lb - (0.07 + 0.1 * p[1]) * zoom
        length = (0.09 + 0.06 * p[2]) * zoom
        th = (0.012 + 0.014 * p[3]) * zoom
        ang = -s * (5 + 25 * p[4])
        band = np.zeros((w, w), np.uint8)
        cv2.ellipse(
            band, (int(bu * w * 16), int(bv * w * 16)), (int(length * w * 16), int(th * w * 16)), ang, 0, 360, 255, -1, cv2.LINE_AA, shift=4
        )
        band_f = _blur(band.astype(np.float32) * (1.0 / 255.0), edge_sigma)
        dens = dens + (0.26 + 0.1 * p[5]) * band_f * np.maximum(lung, 0.3 * body)
        sentences_ate = f"Band-like atelectasis at the {_side_word(s)} lung base."
    else:
        sentences_ate = "No atelectasis."

    # Consolidation: large patchy opacity in one lung
    c = g_cons
    cons_side = -1 if c.random() < 0.5 else 1
    cons_u = cx + cons_side * (mw + (tw - mw) * c.uniform(0.35, 0.65))
    cons_v = lt + (lb - lt) * c.uniform(0.4, 0.8)
    cons_r = c.uniform(0.08, 0.12) * zoom
    cons_amp = c.uniform(0.2, 0.3)
    cons_noise = c.standard_normal((7, 7)).astype(np.float32)
    if "Consolidation" in present:
        patch = cv2.resize(cons_noise, (w, w), interpolation=cv2.INTER_CUBIC)
        rr = ((u - cons_u) ** 2 + (v - cons_v) ** 2) / cons_r**2
        shape = np.clip((1.3 - rr) * 1.5 + 0.6 * patch, 0.0, 1.0)
        shape = _blur(shape.astype(np.float32), 2 * edge_sigma)
        dens = dens + cons_amp * shape * lung
        sentence_cons = f"Consolidation in the {_side_word(cons_side)} lung."
    else:
        sentence_cons = "No focal consolidation."

    # Edema: bilateral perihilar haze
    e = g_edema
    ed_amp = e.uniform(0.14, 0.22)
    ed_sig_u = e.uniform(0.09, 0.13) * zoom
    ed_sig_v = e.uniform(0.12, 0.17) * zoom
    ed_v = lt + (lb - lt) * e.uniform(0.4, 0.55)
    ed_noise = e.standard_normal((10, 10)).astype(np.float32)
    if "Edema" in present:
        hil = np.exp(-0.5 * ((ad - (mw + 0.05 * zoom)) / ed_sig_u) ** 2) * np.exp(-0.5 * ((v - ed_v) / ed_sig_v) ** 2)
        blot = 1.0 + 0.45 * cv2.resize(ed_noise, (w, w), interpolation=cv2.INTER_CUBIC)
        dens = dens + ed_amp * (0.35 + hil) * np.clip(blot, 0.2, 2.0) * lung
        sentence_edema = "Bilateral perihilar haziness consistent with pulmonary edema."
    else:
        sentence_edema = "No pulmonary edema."

    # Pleural effusion: fluid at one or both costophrenic angles
    f = g_eff
    r_ = f.random()
    eff_sides = (-1,) if r_ < 0.4 else (1,) if r_ < 0.8 else (-1, 1)
    eff_depth = [f.uniform(0.07, 0.16) * zoom, f.uniform(0.07, 0.16) * zoom]
    eff_men = f.uniform(0.03, 0.07) * zoom
    eff_amp = f.uniform(0.32, 0.4)
    if "Pleural Effusion" in present:
        fluid = np.zeros((w, w), np.float32)
        for s in eff_sides:
            i = 0 if s < 0 else 1
            ds = s * d
            frac = np.clip((ds - mw) / (tw - mw), 0.0, 1.0)
            level = lb - eff_depth[i] - eff_men * frac**2
            region = (ds > mw * 0.8) & (ds < tw * prof + 0.01) & (v > level) & (v < domes[i] + 0.01)
            fluid = np.maximum(fluid, region.astype(np.float32))
        fluid = _blur(fluid, 2.5 * edge_sigma)
        dens = dens + eff_amp * fluid * body
        if len(eff_sides) == 2:
            sentence_eff = "Bilateral pleural effusions."
        else:
            sentence_eff = f"Small {_side_word(eff_sides[0])} pleural effusion."
    else:
        sentence_eff = "No pleural effusion."

    # --- localized lesions --------------------------------------------------------------------
    lesion_list: list[Lesion] = []
    lesion_sides: dict[str, list[int]] = {k: [] for k in LESION_LABELS}
    lung_idx = np.flatnonzero(lung_bin.ravel())
    gl = g_les
    for _ in range(n_lesions):
        label = LESION_LABELS[int(gl.integers(0, 2))]
        if label == "nodule_mass":
            rad = gl.uniform(0.014, 0.04) * zoom
            amp = gl.uniform(0.22, 0.36)
        else:
            rad = gl.uniform(0.035, 0.06) * zoom
            amp = gl.uniform(0.14, 0.22)
        # a centre inside the lung whose disc of radius ~rad stays mostly within the lung
        pu = pv = None
        for _try in range(40):
            k = int(lung_idx[int(gl.integers(0, len(lung_idx)))]) if len(lung_idx) else (w * w // 2)
            cu, cvv = (k % w + 0.5) / w, (k // w + 0.5) / w
            ok = True
            for du, dv in ((rad, 0), (-rad, 0), (0, rad), (0, -rad)):
                iu = int(np.clip((cu + du) * w, 0, w - 1))
                iv = int(np.clip((cvv + dv) * w, 0, w - 1))
                if not lung_bin[iv, iu]:
                    ok = False
                    break
            if ok:
                pu, pv = cu, cvv
                break
        if pu is None or pv is None:
            pu, pv = cu, cvv
        x0 = max(0, int((pu - 2.2 * rad) * w))
        x1 = min(w, int(math.ceil((pu + 2.2 * rad) * w)) + 1)
        y0 = max(0, int((pv - 2.2 * rad) * w))
        y1 = min(w, int(math.ceil((pv + 2.2 * rad) * w)) + 1)
        uu = u[:, x0:x1]
        vv = v[y0:y1, :]
        if label == "nodule_mass":
            rr = np.sqrt((uu - pu) ** 2 + (vv - pv) ** 2) / rad
            blob = np.clip((1.0 - rr) / 0.15 + 0.5, 0.0, 1.0) * np.sqrt(np.clip(1.2 - rr**2, 0.0, 1.0))
            blob = blob / max(float(blob.max()), 1e-6)
            bx = (pu - rad, pv - rad, pu + rad, pv + rad)
        else:
            acc = np.zeros((y1 - y0, x1 - x0), np.float32)
            for _b in range(int(gl.integers(3, 6))):
                ou, ov = gl.uniform(-0.6, 0.6, size=2) * rad
                sr = gl.uniform(0.35, 0.6) * rad
                acc = np.maximum(acc, np.exp(-0.5 * ((uu - pu - ou) ** 2 + (vv - pv - ov) ** 2) / sr**2))
            rough = cv2.resize(gl.standard_normal((4, 4)).astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            blob = np.clip((acc * (1.0 + 0.3 * rough) - 0.35) / 0.4, 0.0, 1.0)
            ys, xs = np.nonzero(blob > 0.2)
            if len(xs):
                bx = ((x0 + xs.min()) / w, (y0 + ys.min()) / w, (x0 + xs.max() + 1) / w, (y0 + ys.max() + 1) / w)
            else:
                bx = (pu - rad * 0.5, pv - rad * 0.5, pu + rad * 0.5, pv + rad * 0.5)
        dens[y0:y1, x0:x1] += amp * blob.astype(np.float32)
        box = tuple(float(np.clip(c_ * size, 0.0, size)) for c_ in bx)
        lesion_list.append(Lesion(label, box))  # type: ignore[arg-type]
        lesion_sides[label].append(-1 if pu < cx else 1)

    # --- acquisition: exposure, contrast, gamma, resolution, noise -----------------------------
    gg = g_glob
    contrast = gg.uniform(0.8, 1.2)
    bright = gg.uniform(-0.06, 0.06)
    gamma = gg.uniform(0.8, 1.25)
    grad_u, grad_v = gg.uniform(-0.06, 0.06, size=2)
    air = gg.uniform(0.0, 0.06)
    noise_sd = gg.uniform(0.004, 0.03)
    blur_px = gg.uniform(0.0, 1.0)

    img = air + contrast * dens + bright + grad_u * (u - 0.5) + grad_v * (v - 0.5)
    img = np.clip(img, 0.0, 1.0) ** gamma
    if size != w:
        img = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    img = _blur(img.astype(np.float32), blur_px * size / 512.0)
    noise = g_noise.standard_normal((size, size), dtype=np.float32)
    img = img + noise_sd * noise
    np.clip(img, 0.0, 1.0, out=img)

    # --- report -------------------------------------------------------------------------------
    if not present and not lesion_list:
        sentences.append(NORMAL_SENTENCE)
    sentences.append("Heart size is enlarged." if "Cardiomegaly" in present else "Heart size is normal.")
    sentences.append(sentence_eff)
    sentences.append(sentence_edema)
    sentences.append(sentence_cons)
    sentences.append(sentences_ate)
    if lesion_sides["nodule_mass"]:
        for s in sorted(set(lesion_sides["nodule_mass"])):
            sentences.append(f"Nodule or mass in the {_side_word(s)} lung.")
    else:
        sentences.append("No pulmonary nodule or mass.")
    for s in sorted(set(lesion_sides["focal_opacity"])):
        sentences.append(f"Focal opacity in the {_side_word(s)} lung.")
    assert all(x in SENTENCE_BANK for x in sentences)

    return Phantom(
        image=img.astype(np.float32, copy=False),
        findings={name: name in present for name in FINDINGS},
        lesions=lesion_list,
        report_sentences=sentences,
    )


def generate_limb(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A picture that is not a chest (quality flags' negative case): a leg-like radiograph, soft tissue around a
    bright long bone with a joint, air either side, the same from top to bottom but for the joint; bone bright."""
    x = np.linspace(-1, 1, size)[None, :]
    y = np.linspace(-1, 1, size)[:, None]
    tissue = np.abs(x - rng.uniform(-0.1, 0.1)) < rng.uniform(0.25, 0.45)
    joint = 1 + 0.6 * np.exp(-(((y - rng.uniform(-0.3, 0.3)) / 0.12) ** 2))
    bone = np.abs(x - rng.uniform(-0.05, 0.05)) < rng.uniform(0.06, 0.14) * joint
    picture = 0.04 + 0.4 * tissue + 0.45 * bone + rng.normal(0, 0.02, (size, size))
    return _blur(np.clip(picture, 0, 1).astype(np.float32), 2.0 * size / 384)
