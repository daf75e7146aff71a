"""Coherent outputs: the draft report never contradicts the findings, and no two boxes mark one place.

The end-to-end check runs 80 synthetic studies through the local pipeline (about 8 s on the 2-core machine);
benchmarks/coherence_bench.py runs the same audit over 500 (`--studies 500 --size 256`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from radstream.coherence import contradictions, judge, overlapping_boxes
from synthetic.phantoms import FINDINGS, LESION_LABELS, SENTENCE_BANK, SENTENCE_TAGS, generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.model_repository import ModelRepository
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

STUDIES = 80


def test_sentence_tags_hold_on_phantom_ground_truth():
    """Each tag is what the phantoms' reports mean: a sentence asserting a label only appears when it is present."""
    rng = np.random.default_rng(3)
    seen: set[str] = set()
    for _ in range(150):
        phantom = generate_phantom(rng, size=128)
        present = {f for f, on in phantom.findings.items() if on} | {lesion.label for lesion in phantom.lesions}
        for text in phantom.report_sentences:
            asserts, negates = SENTENCE_TAGS[text]
            assert set(asserts) <= present, (text, present)
            assert not set(negates) & present, (text, present)
            seen.add(text)
    assert len(seen) >= len(SENTENCE_BANK) - 2, "the check saw almost every sentence"
    for text, (asserts, negates) in SENTENCE_TAGS.items():
        assert asserts or negates, f"{text!r} says nothing about any finding"
        assert set(asserts) | set(negates) <= set(FINDINGS) | set(LESION_LABELS)


def test_the_committed_bank_carries_the_tags():
    spec = ModelRepository(DEFAULT_MODEL_REPOSITORY).get("report_encoder")
    bank = json.loads((spec.version_dir / "sentence_bank.json").read_text())
    assert {s["text"]: (tuple(s["asserts"]), tuple(s["negates"])) for s in bank["sentences"]} == SENTENCE_TAGS


@pytest.mark.parametrize(
    ("text", "asserts", "denies"),
    [
        ("No focal consolidation.", set(), {"Consolidation"}),
        ("Heart size is normal.", set(), {"Cardiomegaly"}),
        ("Heart size is enlarged.", {"Cardiomegaly"}, set()),
        ("Small left pleural effusion.", {"Pleural Effusion"}, set()),
        ("No acute cardiopulmonary abnormality.", set(), set(FINDINGS) | set(LESION_LABELS)),
    ],
)
def test_the_audit_reads_sentences_by_their_words(text, asserts, denies):
    assert judge(text) == (asserts, denies)


def test_the_audit_catches_a_contradiction_and_an_overlap():
    result = {
        "findings": [{"label": "Consolidation", "positive": True}, {"label": "Edema", "positive": False}],
        "detections": [{"label": "nodule_mass", "box": [10, 10, 50, 50]}, {"label": "focal_opacity", "box": [11, 11, 51, 51]}],
        "report": {
            "impression": [
                {"text": "No focal consolidation."},
                {"text": "Bilateral perihilar haziness consistent with pulmonary edema."},
                {"text": "Nodule or mass in the left lung."},
            ]
        },
    }
    assert contradictions(result) == ["No focal consolidation.", "Bilateral perihilar haziness consistent with pulmonary edema."]
    assert overlapping_boxes(result) == [("nodule_mass", "focal_opacity", 0.906)]


def test_results_never_contradict_the_findings_nor_stack_boxes(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", STUDIES, size=256, seed=11, invalid=False)
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=2) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    assert [o.study_id for o in outcomes if o.status != "succeeded"] == []
    results = [json.loads((tmp_path / "data/results/results" / o.study_id / "result.json").read_text()) for o in outcomes]
    assert {r["study_id"]: contradictions(r) for r in results if contradictions(r)} == {}
    assert {r["study_id"]: overlapping_boxes(r) for r in results if overlapping_boxes(r)} == {}
    # Not vacuous: the studies have positives, boxes and impressions to get wrong.
    assert sum(any(f["positive"] for f in r["findings"]) for r in results) >= STUDIES // 4
    assert sum(len(r["detections"]) >= 2 for r in results) >= 5
    assert all(r["report"]["impression"] for r in results)
