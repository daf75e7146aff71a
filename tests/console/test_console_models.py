"""`radstream demo-models` end to end, and its Models page in Chromium: the candidate imported and run in shadow, the
feedback CSV loaded, and the page's tables equal to template.yaml's named queries run independently over the same lake."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from radstream.analytics import DuckDBQueryRunner
from radstream.cli import main as radstream
from radstream.console.pages import MODEL_QUERIES

from .conftest import start_console


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("models-data")
    assert radstream(["demo-models", "--data-dir", str(data_dir), "--count", "6", "--json"]) == 0
    return data_dir


@pytest.fixture(scope="module")
def models_console(models_dir: Path) -> Iterator[str]:
    yield from start_console(models_dir)


@pytest.fixture(scope="module")
def feedback_console(models_dir: Path) -> Iterator[str]:
    yield from start_console(models_dir, "--feedback")


def test_demo_models_imports_shadows_and_loads_feedback(models_dir: Path) -> None:
    repo = models_dir / "model_repository" / "chest_xray_classifier"
    assert json.loads((repo / "live.json").read_text()) == {"live": "1", "shadow": {"version": "2", "fraction": 1.0}, "history": []}
    assert len(list((models_dir / "results" / "shadow").glob("*/chest_xray_classifier/2.json"))) == 6
    assert list((models_dir / "telemetry" / "feedback" / "source=csv").rglob("*.ndjson.gz"))
    assert (models_dir / "feedback.csv").read_text().startswith("study_id,label,verdict,present,box_index,reader\n")


def test_models_page_shows_the_named_queries_numbers(page, models_console: str, models_dir: Path, screenshots: Path) -> None:
    runner = DuckDBQueryRunner(models_dir / "telemetry")
    page.goto(models_console + "models?days=30")
    banner = page.locator("#not-for-clinical-use")
    assert banner.is_visible() and "Not for clinical use" in banner.inner_text()
    assert "untrained" in page.locator("main > p.note").inner_text()
    for name in MODEL_QUERIES:
        expected = runner.run(name, days=30)
        rows = page.locator(f'details[data-query="{name}"] tbody tr').all()
        shown = [tuple(json.loads(cell.get_attribute("data-value")) for cell in row.locator("td").all()) for row in rows]
        assert page.locator(f'details[data-query="{name}"] thead th').all_text_contents() == expected.columns, name
        assert shown == [tuple(row) for row in expected.rows[:100]], name
    agreement = runner.run("model_agreement", days=30).as_dicts()
    assert {r["label"] for r in agreement} == {"Cardiomegaly", "Edema", "Pleural Effusion"}
    assert {r["model_version"] for r in runner.run("model_performance", days=30).as_dicts()} == {"1", "2"}
    # Everything ran today: no baseline yet, so no feature has a PSI and none is shifted.
    assert page.locator("#drift-quiet").is_visible()
    page.locator('nav a:has-text("Models")').click()
    assert page.url.endswith("/models?days=30")
    page.screenshot(path=str(screenshots / "console-models.png"), full_page=True)


def console_feedback(models_dir: Path) -> list[dict]:
    objects = sorted((models_dir / "telemetry" / "feedback" / "source=console").rglob("*.ndjson.gz"))
    return [json.loads(line) for f in objects for line in gzip.decompress(f.read_bytes()).splitlines()]


def test_a_reader_records_a_verdict_from_the_study_page(page, feedback_console: str, models_dir: Path) -> None:
    study_id = "models-001"
    result = json.loads((models_dir / "results" / "results" / study_id / "result.json").read_text())
    edema = next(f for f in result["findings"] if f["label"] == "Edema")
    page.goto(feedback_console + f"study/{study_id}")
    assert "recording feedback" in page.locator("header .mode").inner_text()
    form = page.locator("#feedback form")
    form.locator("input[name=reader]").fill("rad-9")
    form.locator("select[name=label]").select_option("Edema")
    form.locator("select[name=verdict]").select_option("disagree")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/study/models-001?feedback=recorded")
    (row,) = console_feedback(models_dir)
    assert (row["study_id"], row["label"], row["verdict"], row["reader"]) == (study_id, "Edema", "disagree", "rad-9")
    assert row["present"] is (not edema["positive"]) and row["model_version"] == "1" and row["time"]
    # The latest verdict is the truth the metrics use: the console's, after the CSV's.
    performance = DuckDBQueryRunner(models_dir / "telemetry").run("model_performance", days=30).as_dicts()
    live_edema = next(r for r in performance if r["model_version"] == "1" and r["label"] == "Edema" and r["site"] == "all")
    assert live_edema["tp"] + live_edema["tn"] == 5 and live_edema["studies"] == 6


def test_feedback_is_refused_from_another_origin_and_when_read_only(feedback_console: str, models_console: str) -> None:
    body = urllib.parse.urlencode({"reader": "rad-9", "label": "Edema", "verdict": "agree"}).encode()
    for url, origin, status in (
        (feedback_console, "http://evil.example", 403),
        (feedback_console, None, 403),
        (models_console, feedback_console.rstrip("/"), 405),
    ):
        request = urllib.request.Request(url + "study/models-002/feedback", data=body, method="POST")
        if origin:
            request.add_header("Origin", origin)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status
