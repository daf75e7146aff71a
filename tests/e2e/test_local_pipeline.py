"""End to end on one machine: demo studies through template.yaml's rule and state machine, handlers in-process."""

from __future__ import annotations

import gzip
import json
import socket
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml

from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from radstream.template import DEFAULT_TEMPLATE, load_yaml
from shared.contracts import schema_path
from shared.settings import Settings

VALID = 4
EXPECTED_FAILURES = {
    "bad-phi": ("validate", "InvalidStudy"),
    "bad-format": ("validate", "InvalidImage"),
    "bad-digest": ("validate", "InvalidImage"),
    "bad-constant": ("prepare", "InvalidImage"),
}


def lake_records(data_dir: Path) -> list[dict]:
    files = sorted((data_dir / "telemetry").rglob("*.json.gz"))
    return [json.loads(line) for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    folders = write_demo_studies(root / "studies", VALID, size=512)
    with LocalRuntime(Settings(data_dir=root / "data"), workers=2) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    return root / "data", {o.study_id: o for o in outcomes}


def test_valid_studies_have_results_that_match_the_schema(demo):
    data_dir, outcomes = demo
    schema = json.loads(schema_path("result").read_text())
    valid = [o for o in outcomes.values() if o.study_id.startswith("demo-")]
    rules = set()
    assert len(valid) == VALID + 1 and all(o.status == "succeeded" for o in valid), "the PNG/JPEG studies and the DICOM one"
    for o in valid:
        result = json.loads((data_dir / "results" / "results" / o.study_id / "result.json").read_text())
        jsonschema.validate(result, schema)
        assert result["label"] == "not for clinical use"
        assert [f["label"] for f in result["findings"]] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
        assert set(result["models"]) == {"chest_xray_classifier", "anomaly_detector", "report_encoder"}
        assert all("synthetic" in m["provenance"] for m in result["models"].values())
        w, h = result["input"]["width"], result["input"]["height"]
        assert all(0 <= d["box"][0] < d["box"][2] <= w and 0 <= d["box"][1] < d["box"][3] <= h for d in result["detections"])
        assert result["report"]["impression"], "the draft report retrieves sentences"
        assert {"study", "tensors", "inference.chest_xray_classifier"} <= set(result["timings_ms"])
        rules.add(result["input"]["intensity_rule"])
    assert rules == {"png8-percentile", "png16-percentile", "jpeg8-percentile", "dicom-12bit-percentile-inverted"}, (
        "each container's rule is recorded"
    )


def test_invalid_studies_fail_with_a_record_and_keep_their_input(demo):
    data_dir, outcomes = demo
    schema = json.loads(schema_path("failure").read_text())
    for study_id, (stage, error_type) in EXPECTED_FAILURES.items():
        assert outcomes[study_id].status == "failed"
        record = json.loads((data_dir / "results" / "failed" / study_id / "error.json").read_text())
        jsonschema.validate(record, schema)
        assert (record["stage"], record["error_type"]) == (stage, error_type), study_id
        assert record["message"].startswith(f"study {study_id}:")
        assert (data_dir / "images" / record["input"]["key"]).is_file(), "the input stays where it was"
        assert not (data_dir / "results" / "results" / study_id).exists()
    assert "patient_name" in outcomes["bad-phi"].message
    events = [json.loads(line) for line in (data_dir / "events" / "events.jsonl").read_text().splitlines()]
    assert sorted(e["detail"]["study_id"] for e in events if e["detail-type"] == "Study Failed") == sorted(EXPECTED_FAILURES)


def test_no_phi_leaves_the_images_bucket(demo):
    data_dir, _ = demo
    # The DICOM study's SR, overlay and FHIR exports carry its patient module by design (docs/phi.md); nothing else may.
    exports = {p for p in (data_dir / "results").rglob("report.*") if p.suffix != ".txt"}
    assert {p.relative_to(data_dir / "results/results").as_posix() for p in exports} == {
        "demo-dicom/report.sr.dcm",
        "demo-dicom/report.overlay.dcm",
        "demo-dicom/report.fhir.json",
    }
    for bucket in ("results", "telemetry", "artifacts", "logs", "events"):
        for path in (data_dir / bucket).rglob("*"):
            if path.is_file() and path not in exports:
                raw = path.read_bytes()
                text = gzip.decompress(raw) if path.suffix == ".gz" else raw
                # The sidecar's refused name, the DICOM header's name and ID, and even the pseudonymous ids.
                for phi in (b"DOE^JANE", b"DOE^JOHN", b"MRN-", b"anon-"):
                    assert phi not in text, (phi, path)


def test_telemetry_lake_has_one_record_per_stage_per_study(demo):
    data_dir, outcomes = demo
    files = list((data_dir / "telemetry").rglob("*.json.gz"))
    assert files and all(f.relative_to(data_dir / "telemetry").parts[0] == "telemetry" for f in files)
    assert all(f.parent.name.startswith("hour=") and f.parent.parent.name.startswith("dt=") for f in files)
    by_study = Counter((r["study_id"], r["stage"], r.get("model_name")) for r in lake_records(data_dir))
    for study_id in (s for s in outcomes if s.startswith("demo-")):
        stages = {k[1:]: n for k, n in by_study.items() if k[0] == study_id}
        assert stages == {
            ("validate", None): 1,
            ("prepare", None): 1,
            ("inference", "chest_xray_classifier"): 1,
            ("inference", "anomaly_detector"): 1,
            ("inference", "report_encoder"): 1,
            ("store", None): 1,
            ("notify", None): 1,  # the critical-finding rules run on every result (services/notify)
            ("workflow", None): 1,
        } | ({("export", None): 1} if study_id == "demo-dicom" else {}), study_id  # the export stage: DICOM studies only
    bad = {(k[1], k[2]) for k in by_study if k[0] == "bad-constant"}
    assert bad == {("validate", None), ("prepare", None), ("workflow", None)}
    failed = [r for r in lake_records(data_dir) if r["study_id"] == "bad-constant" and r["stage"] == "prepare"]
    assert failed[0]["status"] == "failed" and failed[0]["error_type"] == "InvalidImage"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(tmp_path: Path, template: Path = DEFAULT_TEMPLATE, **settings):
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    sleeps: list[float] = []
    runtime = LocalRuntime(Settings(data_dir=tmp_path / "data", **settings), template_path=template, sleep=sleeps.append)
    try:
        study_id = runtime.study_id(folder)
        events = runtime.upload(folder, study_id)
        (execution_input,) = [i for e in events for i in runtime.route(e)]
        execution = runtime.start(execution_input)
        return runtime.outcome(str(folder), study_id, execution), execution, sleeps
    finally:
        runtime.close()


def test_unavailable_models_are_retried_with_backoff_then_caught(tmp_path):
    outcome, execution, sleeps = run_one(tmp_path, triton_url=f"http://127.0.0.1:{closed_port()}")
    assert outcome.status == "failed" and (outcome.stage, outcome.error_type) == ("inference", "InferenceUnavailable")
    failed = Counter(e.state for e in execution.history if e.type == "TaskFailed")
    # One attempt plus the template's 12 retries for the branch that gave up first; its siblings are cancelled.
    # (A sibling may even be cancelled before its first attempt: the test's sleeps return at once.)
    assert max(failed.values()) == 13 and set(failed) <= {"Classify", "Detect", "Encode"}
    assert "ValidateMetadata" not in failed
    entered = [e.state for e in execution.history if e.type.endswith("StateEntered")]
    assert entered[-3:] == ["RecordFailure", "SendFailureTelemetry", "StudyFailed"]
    # FULL jitter: each wait is drawn from [0, 2 * 2**attempt], capped by the template's MaxDelaySeconds (16).
    assert sleeps and all(0 <= s <= 16 for s in sleeps)


def test_changing_the_template_changes_what_runs(tmp_path):
    # The lanes' one definition (DefinitionUri, beside the template), edited; the template itself copied as it is.
    uri = load_yaml(DEFAULT_TEMPLATE)["Resources"]["StudyWorkflow"]["Properties"]["DefinitionUri"]
    definition = load_yaml(DEFAULT_TEMPLATE.parent / uri)
    classify = definition["States"]["RunModels"]["Branches"][0]["States"]["Classify"]
    classify["Retry"] = [dict(classify["Retry"][0], MaxAttempts=1)]
    edited = tmp_path / "template.yaml"
    edited.write_text(DEFAULT_TEMPLATE.read_text())
    (tmp_path / uri).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / uri).write_text(yaml.safe_dump(definition, sort_keys=False))
    _, execution, _ = run_one(tmp_path, template=edited, triton_url=f"http://127.0.0.1:{closed_port()}")
    failed = Counter(e.state for e in execution.history if e.type == "TaskFailed")
    assert failed["Classify"] == 2, "one attempt plus the one retry the edited template allows"


def test_running_a_study_again_leaves_one_result(tmp_path):
    first, _, _ = run_one(tmp_path)
    second, _, _ = run_one(tmp_path)
    assert first.status == second.status == "succeeded" and first.study_id == second.study_id
    # notifications.json, when a critical-finding rule fired, is the record of its delivery (services/notify), not a result.
    results = sorted(
        p.relative_to(tmp_path / "data") for p in (tmp_path / "data" / "results").rglob("*.json") if p.name != "notifications.json"
    )
    assert results == [Path("results/results/demo-001/result.json")]


def test_every_study_leaves_a_trace_with_one_subsegment_per_task(demo):
    from radstream.traces import latest_trace

    data_dir, outcomes = demo
    ok = latest_trace(data_dir, "demo-001")
    assert ok["annotations"] == {"study_id": "demo-001", "status": "SUCCEEDED", "execution": outcomes["demo-001"].execution_name}
    assert [s["name"] for s in ok["subsegments"]][:2] == ["ValidateMetadata", "PrepareTensors"]
    assert sorted(s["name"] for s in ok["subsegments"][2:5]) == ["Classify", "Detect", "Encode"]
    assert [s["name"] for s in ok["subsegments"][5:]] == ["StoreResults", "NotifyCriticalFindings", "SendTelemetry"]
    assert all(ok["start_time"] <= s["start_time"] <= s["end_time"] <= ok["end_time"] for s in ok["subsegments"])
    failed = latest_trace(data_dir, "bad-constant")
    assert failed["error"] and failed["annotations"]["status"] == "FAILED"
    prepare = next(s for s in failed["subsegments"] if s["name"] == "PrepareTensors")
    assert prepare["cause"] == {"exceptions": [{"type": "InvalidImage"}]}, "the error type, never the message"


def test_resume_runs_what_a_crash_left_between_upload_and_result(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 2, size=256, invalid=False)
    settings = Settings(data_dir=tmp_path / "data")
    crashed = LocalRuntime(settings)
    try:
        crashed.upload(folders[0], "demo-001")  # uploaded, then the process died before the run
        done = crashed.run_folder(folders[1])
    finally:
        crashed.close()
    assert done.status == "succeeded"
    restarted = LocalRuntime(settings)
    try:
        pending = restarted.pending()
        assert pending == ["incoming/demo-001/study.json"], "only the sidecar starts a run; demo-002 already has its result"
        (outcome,) = restarted.resume().outcomes
        assert outcome.study_id == "demo-001" and outcome.status == "succeeded"
        assert restarted.pending() == [], "nothing left, and nothing run twice"
    finally:
        restarted.close()
    assert sorted(p.parent.name for p in (tmp_path / "data" / "results" / "results").rglob("result.json")) == ["demo-001", "demo-002"]


def test_the_handlers_emit_emf_metrics_that_agree_with_the_outcomes(demo):
    """Powertools EMF from every stage invocation, captured to metrics/ as Lambda's log stream would carry them."""
    from shared.metrics import parse_emf

    data_dir, outcomes = demo
    points = [
        p
        for f in sorted((data_dir / "metrics").glob("emf-*.jsonl"))
        for line in f.read_text().splitlines()
        for p in parse_emf(json.loads(line))
    ]
    total = Counter()
    for p in points:
        total[p.name] += sum(p.values)
    assert total["StudiesSucceeded"] == sum(o.status == "succeeded" for o in outcomes.values())
    assert total["StudiesFailed"] == sum(o.status == "failed" for o in outcomes.values())
    stages = {dict(p.dimensions).get("stage") for p in points if p.name == "StageDuration"}
    assert stages == {"validate", "prepare", "inference", "store", "notify", "export", "telemetry"}  # export: the demo's DICOM study
    assert {dict(p.dimensions)["model"] for p in points if p.name == "ModelLatency"} == {
        "chest_xray_classifier",
        "anomaly_detector",
        "report_encoder",
    }
    assert all(("study_id", o) not in p.dimensions for p in points for o in outcomes), "study ids are metadata, never dimensions"
    errors = {dict(p.dimensions)["error_type"] for p in points if p.name == "StageErrors"}
    assert errors == {"InvalidStudy", "InvalidImage"}


def test_tensors_live_in_memory_for_one_execution(demo, tmp_path):
    """The embedded artifacts bucket: prepare's tensors reach the models from memory and are dropped when the execution
    ends (succeeded or failed), so a long run holds no tensors; none is ever written to the data dir."""
    from shared import wiring

    data_dir, outcomes = demo
    assert all(o.status == "succeeded" for o in outcomes.values() if o.study_id.startswith("demo-"))
    assert wiring.execution_artifacts(Settings(data_dir=data_dir)).list_keys("artifacts") == []
    assert not (data_dir / "artifacts").exists()
    # The stages of one data dir share one store (prepare writes what inference reads); another data dir has its own.
    store = wiring.object_store(Settings(data_dir=tmp_path))
    store.put_bytes("artifacts", "tensors/s1/m.npy", b"x")
    assert wiring.object_store(Settings(data_dir=tmp_path)).get_bytes("artifacts", "tensors/s1/m.npy") == b"x"
    assert wiring.object_store(Settings(data_dir=data_dir)).head("artifacts", "tensors/s1/m.npy") is None
    assert not (tmp_path / "artifacts").exists()
    wiring.execution_artifacts(Settings(data_dir=tmp_path)).delete_prefix("artifacts", "tensors/s1/")


def test_models_run_one_after_another_unless_asked(tmp_path):
    """A study's three models run serially by default (LocalRuntime's branch_threads), side by side when asked; the
    result is the same either way."""
    folders = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[:1]
    probabilities = []
    for threads in (0, 8):
        with LocalRuntime(Settings(data_dir=tmp_path / f"data-{threads}"), workers=1, branch_threads=threads) as runtime:
            assert runtime.machine._pool._max_fanout == threads
            (outcome,) = runtime.run_many(folders).outcomes
        assert outcome.status == "succeeded", outcome.message
        probabilities.append(outcome.findings)
    assert probabilities[0] == probabilities[1]


def test_the_stage_handlers_neither_mutate_their_input_nor_return_what_the_state_holds(tmp_path):
    """The runtime's state machine hands tasks the state's own values and keeps their outputs uncopied
    (copy_task_io=False): that holds only while every handler leaves its input alone and returns values of its own.
    Every study of the demo set (failures included: RecordFailure reads the whole state) is run with each task's
    input compared, before and after, with a deep copy taken before the call."""
    import copy

    folders = write_demo_studies(tmp_path / "studies", 3, size=128)
    checked: list[str] = []
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1) as runtime:
        invoke = runtime.invoke

        def checking(resource, payload, context):
            before = copy.deepcopy(payload)
            output = invoke(resource, payload, context)
            assert payload == before, f"{context.state_name} changed its input"
            ids = set()

            def walk(value):
                if isinstance(value, dict | list):
                    ids.add(id(value))
                    for item in value.values() if isinstance(value, dict) else value:
                        walk(item)

            walk(payload)
            shared = []

            def find(value):
                if isinstance(value, dict | list):
                    if id(value) in ids:
                        shared.append(value)
                    for item in value.values() if isinstance(value, dict) else value:
                        find(item)

            find(output)
            assert shared == [], f"{context.state_name} returned part of its input"
            checked.append(context.state_name)
            return output

        runtime.machine.invoke = checking
        outcomes = runtime.run_many(folders).outcomes
    assert {o.status for o in outcomes} == {"succeeded", "failed"}
    assert {"ValidateMetadata", "PrepareTensors", "StoreResults", "RecordFailure"} <= set(checked)


def test_warm_start_loads_every_stage_before_the_first_study(tmp_path):
    """Issue 23: the model sessions and the export's builders are loaded by `warm`, not by the first study: every task
    of template.yaml's workflow is bound and warmed without error, each model has its session, and a warm failure is
    reported, never raised."""
    from services.export import handler as export
    from services.triton import handler as triton

    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1) as runtime:
        warmed = runtime.warm()
        assert warmed and all(error is None for error in warmed.values()), warmed
        assert any(resource.endswith("ExportFunction") for resource in warmed)
        (deps,) = {id(d): d for h, d in runtime._bindings.values() if h is triton.lambda_handler}.values()
        assert {name for name, _ in deps.inference.backend._sessions} == set(deps.inference.repository.models)
        assert runtime.warm() is warmed  # once per runtime

    def broken(deps):
        raise RuntimeError("no highdicom here")

    failing = type(export.lambda_handler)("export", export.run, export.lambda_handler.build, broken)
    assert failing.warm(None) == "RuntimeError"
