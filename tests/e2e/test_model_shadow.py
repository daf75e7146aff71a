"""Shadow (A/B): a candidate classifier beside the live one, through template.yaml's workflow on one machine; its
outputs stored apart; the comparison queries over the lake, one checked against a hand-computed example."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radstream.analytics import DuckDBQueryRunner
from radstream.demo_models import CANDIDATE_LABELS, write_candidate
from radstream.model_lifecycle import import_model, set_shadow
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.lake_tables import MODEL_OUTPUTS, put_rows
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings
from shared.storage import LocalObjectStore

CLASSIFIER = "chest_xray_classifier"
LIVE_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.rglob("*.ndjson.gz")) for line in gzip.decompress(f.read_bytes()).splitlines()]


@pytest.fixture(scope="module")
def shadow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shadow")
    repo = root / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    onnx_path, spec_path = write_candidate(root / "candidate")
    imported = import_model(onnx_path, spec_path, repo)
    set_shadow(repo, CLASSIFIER, imported.version, 1.0)
    folders = write_demo_studies(root / "studies", 3, size=256, invalid=False)
    settings = Settings(data_dir=root / "data", model_repository=repo)
    with LocalRuntime(settings, workers=1) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    valid = sorted(o.study_id for o in outcomes if o.status == "succeeded")
    return root / "data", repo, valid


def test_only_live_results_reach_the_study_record(shadow_run):
    data, _, valid = shadow_run
    assert len(valid) >= 3
    for study_id in valid:
        result = json.loads((data / "results" / "results" / study_id / "result.json").read_text())
        assert result["models"][CLASSIFIER]["version"] == "1"
        assert [f["label"] for f in result["findings"]] == LIVE_LABELS
        assert not any(k.startswith("inference") and "shadow" in k for k in result["timings_ms"])
        # The candidate's answer is stored apart, labelled with what it is.
        shadow = json.loads((data / "results" / "shadow" / study_id / CLASSIFIER / "2.json").read_text())
        assert [f["label"] for f in shadow["findings"]] == list(CANDIDATE_LABELS)
        assert "untrained" in shadow["model"]["provenance"]
    exports = [p for p in (data / "results").rglob("*") if p.is_file() and "shadow" not in p.parts]
    assert not any("/2.json" in str(p) for p in exports)


def test_lake_rows_of_each_role_sit_in_their_own_partition(shadow_run):
    data, _, valid = shadow_run
    live = rows_of(data / "telemetry" / MODEL_OUTPUTS / "role=live")
    shadow = rows_of(data / "telemetry" / MODEL_OUTPUTS / "role=shadow")
    assert {r["model_version"] for r in live if r["model_name"] == CLASSIFIER} == {"1"}
    assert {(r["model_name"], r["model_version"]) for r in shadow} == {(CLASSIFIER, "2")}
    assert {r["study_id"] for r in shadow} == set(valid)
    assert all(r["latency_ms"] is not None and r["latency_ms"] > 0 for r in shadow)
    # The live rows carry the study's inputs, and prepare's InputExposure metric (the input-drift alarm's) says the same.
    exposures = {r["study_id"]: r["exposure"] for r in live}
    assert all(0 < e < 1 for e in exposures.values())
    assert all(r["site"] for r in live if r["study_id"] != "demo-dicom"), "a sidecar's source is its study's site"
    emf = [json.loads(line) for f in (data / "metrics").glob("emf-*.jsonl") for line in f.read_text().splitlines()]
    metric = sorted(v for d in emf if "InputExposure" in d for v in d["InputExposure"])
    assert metric == sorted(exposures[s] for s in valid)
    # Telemetry records stay in the telemetry table's layout, untouched by the model tables.
    assert not list((data / "telemetry" / "telemetry").rglob("*.ndjson.gz"))


def test_comparison_queries_pair_the_versions_on_their_common_labels(shadow_run):
    data, _, valid = shadow_run
    runner = DuckDBQueryRunner(data / "telemetry")
    agreement = runner.run("model_agreement").as_dicts()
    assert {r["label"] for r in agreement} == set(LIVE_LABELS) & set(CANDIDATE_LABELS)
    for r in agreement:
        assert (r["model_name"], r["live_version"], r["shadow_version"], r["studies"]) == (CLASSIFIER, "1", "2", len(valid))
        assert r["both_positive"] + r["live_only"] + r["shadow_only"] + r["both_negative"] == len(valid)
        assert 0 <= r["mean_abs_dp"] <= 1
    cost = {(r["model_name"], r["model_version"], r["role"]): r for r in runner.run("model_version_cost").as_dicts()}
    assert cost[(CLASSIFIER, "1", "live")]["inferences"] == cost[(CLASSIFIER, "2", "shadow")]["inferences"] == len(valid)
    assert cost[(CLASSIFIER, "2", "shadow")]["usd_per_1000_inferences"] > 0


def test_the_compare_command_prints_both_queries(shadow_run, capsys):
    from radstream.cli import main

    data, _, valid = shadow_run
    assert main(["models", "compare", "--data-dir", str(data), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {r["label"] for r in found["model_agreement"]} == {"Cardiomegaly", "Edema", "Pleural Effusion"}
    assert {r["role"] for r in found["model_version_cost"]} == {"live", "shadow"}
    assert main(["models", "compare", "--data-dir", str(data)]) == 0
    assert "kappa" in capsys.readouterr().out


def test_a_failing_shadow_never_costs_the_study(tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    onnx_path, spec_path = write_candidate(tmp_path / "candidate")
    set_shadow(repo, CLASSIFIER, import_model(onnx_path, spec_path, repo).version, 1.0)
    (repo / CLASSIFIER / "2" / "model.onnx").write_bytes(b"not an onnx file")  # broken after its checks
    folders = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)
    with LocalRuntime(Settings(data_dir=tmp_path / "data", model_repository=repo), workers=1) as runtime:
        outcomes = [o for o in runtime.run_many(folders).outcomes if o.study_id.startswith("demo-")]
    assert outcomes and all(o.status == "succeeded" for o in outcomes)
    assert not (tmp_path / "data" / "results" / "shadow").exists()


def test_agreement_matches_a_hand_computed_example(tmp_path):
    """10 studies, Edema: both positive 3, live only 1, shadow only 2, both negative 4.
    Positive agreement 2*3/(2*3+1+2) = 0.6667; observed 0.7; expected (4*5 + 6*5)/100 = 0.5; kappa (0.7-0.5)/0.5 = 0.4.
    |dp| 0.1 on every study: mean 0.1."""
    store = LocalObjectStore(tmp_path / "data")
    now = datetime.now(UTC)
    cells = [(True, True)] * 3 + [(True, False)] + [(False, True)] * 2 + [(False, False)] * 4
    for i, (live_pos, shadow_pos) in enumerate(cells):
        for role, version, positive, p in (("live", "1", live_pos, 0.5), ("shadow", "2", shadow_pos, 0.6)):
            row = {
                "time": now.isoformat(),
                "study_id": f"s{i}",
                "execution_id": "e",
                "model_name": CLASSIFIER,
                "model_version": version,
                "kind": "classifier",
                "label": "Edema",
                "probability": p,
                "threshold": 0.5,
                "positive": positive,
                "latency_ms": 2.0,
            }
            put_rows(store, "telemetry", MODEL_OUTPUTS, role, now, f"s{i}", "e", [row])
    (row,) = DuckDBQueryRunner(tmp_path / "data" / "telemetry").run("model_agreement").as_dicts()
    assert (row["both_positive"], row["live_only"], row["shadow_only"], row["both_negative"]) == (3, 1, 2, 4)
    assert row["positive_agreement"] == pytest.approx(0.6667)
    assert row["kappa"] == pytest.approx(0.4)
    assert row["mean_abs_dp"] == pytest.approx(0.1)


def reference_spec(folder: Path, model: str) -> Path:
    """A spec for the reference detector or encoder itself: imported again, it is a second version of its slot."""
    src = DEFAULT_MODEL_REPOSITORY / model
    common = {"provenance": "reference model trained on synthetic phantoms, imported again (test)", "intended_use": "tests only"}
    if model == "anomaly_detector":
        labels = (src / "labels.txt").read_text().split()
        spec = {
            "model": model,
            "kind": "detector",
            "title": "reference detector again",
            "input": {"size": 256, "normalization": "unit"},
            "outputs": {
                "labels": labels,
                "box_format": "xyxy",
                "score_threshold": json.loads((src / "thresholds.json").read_text())["score_threshold"],
            },
            **common,
        }
    else:
        shutil.copy(src / "1" / "sentence_bank.json", folder / "bank.json")
        spec = {
            "model": model,
            "kind": "encoder",
            "title": "reference encoder again",
            "input": {"size": 224, "normalization": "unit"},
            "outputs": {"embedding_size": 128, "sentence_bank": "bank.json"},
            **common,
        }
    path = folder / f"{model}.spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_detector_and_encoder_candidates_import_and_run_in_shadow(tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    for model in ("anomaly_detector", "report_encoder"):
        imported = import_model(DEFAULT_MODEL_REPOSITORY / model / "1" / "model.onnx", reference_spec(tmp_path, model), repo)
        set_shadow(repo, model, imported.version, 1.0)
    config = (repo / "anomaly_detector" / "2" / "config.pbtxt").read_text()
    assert 'name: "classes"\n    data_type: TYPE_INT32' in config  # the type the model declares
    folders = write_demo_studies(tmp_path / "studies", 2, size=256, invalid=False)
    with LocalRuntime(Settings(data_dir=tmp_path / "data", model_repository=repo), workers=1) as runtime:
        outcomes = [o for o in runtime.run_many(folders).outcomes if o.study_id.startswith("demo-")]
    assert outcomes and all(o.status == "succeeded" for o in outcomes)
    for o in outcomes:
        live = json.loads((tmp_path / "data" / "results" / "results" / o.study_id / "result.json").read_text())
        detector = json.loads((tmp_path / "data" / "results" / "shadow" / o.study_id / "anomaly_detector" / "2.json").read_text())
        encoder = json.loads((tmp_path / "data" / "results" / "shadow" / o.study_id / "report_encoder" / "2.json").read_text())
        assert detector.get("detections", []) == live["detections"]  # the same model: the same boxes
        assert encoder["candidates"] and encoder["model"]["version"] == "2"
    agreement = DuckDBQueryRunner(tmp_path / "data" / "telemetry").run("model_agreement").as_dicts()
    assert {r["label"] for r in agreement} == {"nodule_mass", "focal_opacity"}
    assert all(r["mean_abs_dp"] == 0 and r["live_only"] == r["shadow_only"] == 0 for r in agreement)
