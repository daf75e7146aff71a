"""The triage worklist in a real browser (Chromium): studies sorted by priority, critical flag and time waiting; a
critical-finding notification acknowledged from the study page (who and when, appended to its trail, never deleted);
the dashboard's triage table equal to the named query run independently."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from radstream.analytics import DuckDBQueryRunner
from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import encode, sidecar, write_study
from shared.contracts import StudyNotifications
from shared.settings import Settings

from .conftest import start_console

ROOT = Path(__file__).resolve().parents[2]
CRITICAL = ["Pleural Effusion", "Edema", "Consolidation"]


@pytest.fixture(scope="module")
def triage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five studies run in this order: routine quiet, routine quiet, routine critical, urgent quiet, stat critical."""
    root = tmp_path_factory.mktemp("triage")
    rng = np.random.default_rng(9)
    plan = [("a-routine", "routine", []), ("b-routine", "routine", []), ("c-routine-crit", "routine", CRITICAL)]
    plan += [("d-urgent", "urgent", []), ("e-stat-crit", "stat", CRITICAL)]
    folders = []
    for study_id, level, findings in plan:
        name, data = encode(generate_phantom(rng, size=256, findings=findings, lesions=0).image, 0)
        folders.append(write_study(root / "in" / study_id, sidecar(study_id, name, rng, data) | {"priority": level}, name, data))
    with LocalRuntime(Settings(data_dir=root / "data"), workers=1) as runtime:
        for folder in folders:  # one at a time, so the routine ones have waited longest
            assert runtime.run_folder(folder).status == "succeeded"
    return root / "data"


@pytest.fixture(scope="module")
def triage_console(triage_dir: Path) -> Iterator[str]:
    yield from start_console(triage_dir)


def ledger(data_dir: Path, study_id: str) -> StudyNotifications:
    return StudyNotifications.model_validate_json((data_dir / "results" / "results" / study_id / "notifications.json").read_text())


def test_worklist_sorts_by_priority_critical_flag_and_waiting(page, triage_console: str, triage_dir: Path) -> None:
    assert ledger(triage_dir, "e-stat-crit").notifications and ledger(triage_dir, "c-routine-crit").notifications
    assert not (triage_dir / "results" / "results" / "a-routine" / "notifications.json").exists()
    page.goto(triage_console + "worklist")
    rows = page.locator("#worklist tr[data-study]").all()
    order = [r.get_attribute("data-study") for r in rows]
    # stat, urgent, then routine: the critical one (not acknowledged) first, then the longest waiting.
    assert order == ["e-stat-crit", "d-urgent", "c-routine-crit", "a-routine", "b-routine"], order
    assert rows[0].get_attribute("data-critical") == "unacknowledged" and rows[1].get_attribute("data-critical") == "none"
    waits = [int(r.locator("td[data-col=waiting]").get_attribute("data-seconds")) for r in rows[3:]]
    assert waits[0] >= waits[1]


def test_acknowledging_a_notification_is_recorded_and_shown_in_its_trail(page, triage_console: str, triage_dir: Path) -> None:
    page.goto(triage_console + "study/e-stat-crit")
    notes = page.locator("#notifications article.notification")
    assert notes.count() == len(ledger(triage_dir, "e-stat-crit").notifications)
    first = notes.first
    rule = first.get_attribute("data-rule")
    assert first.locator("[data-channel=event]").inner_text().startswith("event: delivered")
    assert [li.get_attribute("data-what") for li in first.locator("ol.trail li").all()][:2] == ["fired", "delivered"]
    first.locator("input[name=by]").fill("Dr Reader")
    first.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/study/e-stat-crit.*"))
    acknowledged = page.locator(f"article.notification[data-rule={rule}]")
    assert acknowledged.get_attribute("data-acknowledged") == "yes"
    assert "Acknowledged by Dr Reader" in acknowledged.inner_text()
    assert acknowledged.locator("ol.trail li[data-what=acknowledged]").count() == 1
    stored = next(n for n in ledger(triage_dir, "e-stat-crit").notifications if n.rule == rule)
    assert stored.acknowledged_by == "Dr Reader" and stored.acknowledged_at is not None
    trail = [e.what for e in stored.trail]
    assert trail[0] == "fired" and trail[-1] == "acknowledged"  # appended: nothing before it was rewritten or removed
    # Not from another origin: a page elsewhere cannot acknowledge for a person.
    forged = urllib.request.Request(
        triage_console + "study/e-stat-crit/acknowledge",
        data=f"rule={rule}&by=mallory".encode(),
        method="POST",
        headers={"Origin": "http://evil.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403
    assert next(n for n in ledger(triage_dir, "e-stat-crit").notifications if n.rule == rule).acknowledged_by == "Dr Reader"
    # The worklist now shows the stat study's finding as acknowledged when every rule is.
    for _ in notes.all()[1:]:
        page.goto(triage_console + "study/e-stat-crit")
        pending = page.locator("article.notification[data-acknowledged=no]").first
        pending.locator("input[name=by]").fill("Dr Reader")
        pending.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r".*/study/e-stat-crit.*"))
    page.goto(triage_console + "worklist")
    assert page.locator("#worklist tr[data-study=e-stat-crit]").get_attribute("data-critical") == "acknowledged"


def test_dashboard_shows_triage_latency_by_priority(page, triage_console: str, triage_dir: Path) -> None:
    page.goto(triage_console + "dashboard?days=7")
    shown = {
        (r.get_attribute("data-priority"), r.get_attribute("data-span")): r for r in page.locator("table.triage tr[data-priority]").all()
    }
    expected = DuckDBQueryRunner(triage_dir / "telemetry").run("triage_latency_by_priority", days=7).as_dicts()
    assert {(r["priority"], r["span"]) for r in expected} == set(shown)
    assert ("stat", "arrival_to_notification") in shown and ("routine", "arrival_to_result") in shown
    for r in expected:
        cells = shown[(r["priority"], r["span"])].locator("td").all_inner_texts()
        assert int(cells[2]) == r["studies"]
    assert json.loads(urllib.request.urlopen(triage_console + "query/triage_latency_by_priority.json?days=7", timeout=10).read())["rows"]


def test_the_study_page_shows_the_rules_the_result_says_fired(page, triage_console: str, triage_dir: Path) -> None:
    result = json.loads((triage_dir / "results" / "results" / "e-stat-crit" / "result.json").read_text())
    page.goto(triage_console + "study/e-stat-crit")
    section = page.locator("#critical-findings")
    shown = [li.get_attribute("data-rule") for li in section.locator("li[data-rule]").all()]
    assert shown == [c["rule"] for c in result["critical_findings"]] and shown
    assert all(c["message_id"] in section.inner_text() for c in result["critical_findings"])
    page.goto(triage_console + "study/a-routine")
    assert page.locator("#critical-findings").get_attribute("data-fired") == "0"
    assert "No rule fired." in page.locator("#critical-findings").inner_text()
