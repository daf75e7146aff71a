"""Drift: the model_drift named query's population stability index fires on a shifted synthetic population and stays
quiet on an unshifted one; daily_distributions gives the per-day, per-site figures the console charts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from radstream.analytics import DuckDBQueryRunner
from shared.lake_tables import MODEL_OUTPUTS, put_rows
from shared.storage import LocalObjectStore

CLASSIFIER = "chest_xray_classifier"


def write_population(
    data: Path, when: datetime, prefix: str, rng: np.random.Generator, *, exposure: tuple[float, float], edema: float
) -> None:
    """400 studies (PSI over 10 bins reads ~(bins - 1) * (1/n1 + 1/n2) from sampling alone: 0.045 here, 0.3 at 60 a
    window): exposure uniform in `exposure`, Edema probability around `edema`, 12-bit DX PA from one scanner."""
    rows = []
    for i in range(400):
        p = float(np.clip(rng.normal(edema, 0.08), 0, 1))
        row = {
            "time": when.isoformat(),
            "study_id": f"{prefix}-{i}",
            "execution_id": "e",
            "model_name": CLASSIFIER,
            "model_version": "1",
            "kind": "classifier",
            "label": "Edema",
            "probability": round(p, 4),
            "threshold": 0.5,
            "positive": p >= 0.5,
            "latency_ms": 1.0,
            "site": "site-a",
            "scanner": "Acme DR1",
            "modality": "DX",
            "view_position": "PA",
            "width": 2048,
            "height": 2500,
            "bit_depth": 12,
            "exposure": round(float(rng.uniform(*exposure)), 4),
        }
        rows.append(row)
    put_rows(LocalObjectStore(data), "telemetry", MODEL_OUTPUTS, "live", when, prefix, "e", rows)


def drift(data: Path) -> dict[str, dict]:
    return {r["feature"]: r for r in DuckDBQueryRunner(data / "telemetry").run("model_drift", days=1, baseline_days=28).as_dicts()}


def write_baseline_and_recent(data: Path, seed: int, exposure: tuple[float, float], edema: float) -> Path:
    """A baseline population ten days ago (exposure 0.35-0.65, Edema 0.3), then today's (these exposures, this Edema)."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    write_population(data, now - timedelta(days=10), "base", rng, exposure=(0.35, 0.65), edema=0.3)
    write_population(data, now, "new", rng, exposure=exposure, edema=edema)
    return data


def test_drift_is_quiet_on_an_unshifted_population(tmp_path):
    found = drift(write_baseline_and_recent(tmp_path, 1, exposure=(0.35, 0.65), edema=0.3))
    assert {"exposure", "size", "bit_depth", "modality", "view_position", "scanner", "output:Edema"} <= set(found)
    assert all(r["level"] == "stable" for r in found.values()), {f: r["psi"] for f, r in found.items()}
    assert found["exposure"]["baseline_studies"] == found["exposure"]["recent_studies"] == 400


def test_drift_fires_on_a_shifted_population(tmp_path):
    # Under-exposed pictures, and the classifier's Edema moving with them (the 0.45x exposure case).
    found = drift(write_baseline_and_recent(tmp_path, 2, exposure=(0.1, 0.3), edema=0.75))
    assert found["exposure"]["level"] == "shifted" and found["output:Edema"]["level"] == "shifted"
    assert found["modality"]["level"] == "stable" and found["scanner"]["psi"] == 0
    daily = DuckDBQueryRunner(tmp_path / "telemetry").run("daily_distributions").as_dicts()
    assert [(r["studies"], r["site"]) for r in daily] == [(400, "site-a"), (400, "site-a")]
    assert daily[0]["mean_exposure"] > 0.4 > daily[1]["mean_exposure"]


def test_the_drift_alarm_fires_on_the_shifted_population_and_stays_quiet_on_the_unshifted(tmp_path, capsys):
    """`radstream models drift --alarm` evaluates template.yaml's ModelDriftAlarm (threshold and comparison read from
    it) on every feature's PSI: exit 1 naming the shifted features, exit 0 on the unshifted population. The EMF
    documents it captures are those the daily drift check writes in Lambda."""
    from radstream.cli import main
    from radstream.model_drift import drift_alarm

    alarm = drift_alarm()
    assert (alarm.threshold, alarm.comparison) == (0.25, "GreaterThanOrEqualToThreshold")
    quiet = write_baseline_and_recent(tmp_path / "quiet", 1, exposure=(0.35, 0.65), edema=0.3)
    shifted = write_baseline_and_recent(tmp_path / "shifted", 2, exposure=(0.1, 0.3), edema=0.75)

    assert main(["models", "drift", "--alarm", "--data-dir", str(quiet)]) == 0
    out = capsys.readouterr()
    assert "ModelDriftAlarm" not in out.err and out.out.count("ok ") >= 7 and "ALARM" not in out.out

    assert main(["models", "drift", "--alarm", "--data-dir", str(shifted)]) == 1
    err = capsys.readouterr().err
    alarms = {line.split()[2] for line in err.splitlines() if line.startswith("ModelDriftAlarm:")}
    assert alarms == {"exposure", "output:Edema"}, err
    # The captured metrics: each feature's PSI under its own dimensions and under `service` alone (the alarm's).
    lines = [json.loads(line) for f in (shifted / "metrics").glob("emf-*.jsonl") for line in f.read_text().splitlines()]
    per_feature = {d["feature"]: d["ModelDriftPSI"][0] for d in lines if d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0] != ["service"]}
    overall = [d["ModelDriftPSI"][0] for d in lines if d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0] == ["service"]]
    assert per_feature["exposure"] >= 0.25 and max(overall) == max(per_feature.values()) and len(overall) == len(per_feature)


def test_the_drift_check_is_scheduled_in_the_template_with_least_privilege():
    """The AWS side of the same alarm: a daily schedule runs services/telemetry/drift.py on the named query by id, and
    its role reaches only that workgroup, the model_outputs table and objects, the query results and the data key."""
    from radstream.template import Template

    resources = Template().resources
    function = resources["DriftCheckFunction"]["Properties"]
    assert function["ImageConfig"]["Command"] == ["services.telemetry.drift.lambda_handler"]
    assert function["Environment"]["Variables"]["DRIFT_QUERY_ID"] == {"Ref": "ModelDriftQuery"}
    assert resources["ModelDriftQuery"]["Properties"]["Name"] == "model_drift"
    (schedule,) = function["Events"].values()
    assert schedule["Type"] == "ScheduleV2" and schedule["Properties"]["ScheduleExpression"] == "rate(1 day)"
    for statement in function["Policies"][0]["Statement"]:
        resources_ = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all(r != "*" for r in resources_), statement["Sid"]
        assert all(not a.endswith(":*") for a in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]))
    alarm = resources["ModelDriftAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"]) == (
        "RadStream",
        "ModelDriftPSI",
        [{"Name": "service", "Value": "radstream"}],
    )
