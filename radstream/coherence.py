"""Audits a result for incoherence: report sentences that contradict the findings, boxes that overlap.

The judge reads sentences as text (keywords and negation), not the sentence bank's tags, so it checks
the store stage's selection independently of the tags that selection relies on.
"""

from __future__ import annotations

import re
from typing import Any

# Words that name each finding (classifier) or lesion (detector) in a report sentence.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("heart size", "cardiomegaly", "cardiac silhouette"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Pleural Effusion": ("effusion",),
    "nodule_mass": ("nodule", "mass"),
    "focal_opacity": ("focal opacity", "focal opacities"),
}
NORMAL_WORDS = re.compile(r"\b(no acute|unremarkable|within normal limits)\b", re.I)
NEGATION = re.compile(r"^\s*(no|without|negative for)\b|\b(is|are) normal\b", re.I)


def judge(sentence: str) -> tuple[set[str], set[str]]:
    """(labels the sentence asserts, labels it denies), read from its words."""
    text = sentence.lower()
    if NORMAL_WORDS.search(text):
        return set(), set(KEYWORDS)
    named = {label for label, words in KEYWORDS.items() if any(w in text for w in words)}
    return (set(), named) if NEGATION.search(text) else (named, set())


def contradictions(result: dict[str, Any]) -> list[str]:
    """Each impression sentence that denies a positive finding or asserts one the models called negative."""
    positive = {f["label"] for f in result["findings"] if f["positive"]}
    decided = {f["label"] for f in result["findings"]} | {"nodule_mass", "focal_opacity"}
    positive |= {d["label"] for d in result["detections"]}
    found = []
    for sentence in (result.get("report") or {}).get("impression", []):
        asserts, denies = judge(sentence["text"])
        if denies & positive or (asserts & decided) - positive:
            found.append(sentence["text"])
    return found


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def overlapping_boxes(result: dict[str, Any], limit: float = 0.5) -> list[tuple[str, str, float]]:
    """Pairs of reported boxes (any labels) whose IoU exceeds `limit`."""
    boxes = result["detections"]
    return [
        (a["label"], b["label"], round(iou(a["box"], b["box"]), 3))
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if iou(a["box"], b["box"]) > limit
    ]
