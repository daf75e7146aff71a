"""The console in a real browser: the demo studies listed, boxes where result.json puts them, MONOCHROME1 shown with bone
bright, and dashboard numbers equal to template.yaml's named queries run independently over the same lake."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from radstream.analytics import DuckDBQueryRunner
from radstream.cli import main as radstream
from radstream.console.pages import DASHBOARD_QUERIES, per_bucket


def results(data_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (data_dir / "results" / "results").glob("*/result.json")}


def failures(data_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (data_dir / "results" / "failed").glob("*/error.json")}


def assert_not_for_clinical_use(page) -> None:
    banner = page.locator("#not-for-clinical-use")
    assert banner.is_visible() and "Not for clinical use" in banner.inner_text()


def test_studies_page_lists_every_demo_study_with_failures_explained(page, console_url: str, demo_dir: Path, screenshots: Path) -> None:
    page.goto(console_url + "studies")
    assert_not_for_clinical_use(page)
    listed = {row.get_attribute("data-study"): row for row in page.locator("tr[data-study]").all()}
    ok, bad = results(demo_dir), failures(demo_dir)
    assert len(ok) == 5 and len(bad) == 4  # 4 valid + the DICOM; 4 broken on purpose
    assert set(listed) == set(ok) | set(bad)
    for study_id, doc in ok.items():
        row = listed[study_id]
        assert "succeeded" in row.get_attribute("class")
        assert row.locator("td[data-col=boxes]").inner_text() == str(len(doc["detections"]))
        positives = [f["label"] for f in doc["findings"] if f["positive"]]
        assert row.locator("td").nth(2).inner_text() == (", ".join(positives) or "none above threshold")
        assert "ms" in row.inner_text() and "chest_xray_classifier v1" in row.inner_text()
    for study_id, doc in bad.items():
        text = listed[study_id].inner_text()
        assert doc["stage"] in text and doc["error_type"] in text and doc["message"] in text
    page.screenshot(path=str(screenshots / "console-studies.png"), full_page=True)

    page.select_option("select[name=status]", "failed")
    page.click("button[type=submit]")
    assert {r.get_attribute("data-study") for r in page.locator("tr[data-study]").all()} == set(bad)
    label = next(f["label"] for doc in ok.values() for f in doc["findings"] if f["positive"])
    page.goto(console_url + "studies?finding=" + label.replace(" ", "+"))
    expected = {s for s, doc in ok.items() if any(f["label"] == label and f["positive"] for f in doc["findings"])}
    assert {r.get_attribute("data-study") for r in page.locator("tr[data-study]").all()} == expected


def test_study_page_draws_each_box_where_result_json_puts_it(page, console_url: str, demo_dir: Path, screenshots: Path) -> None:
    docs = results(demo_dir)
    with_boxes = [s for s, d in docs.items() if d["detections"]]
    assert with_boxes, "the demo should produce at least one study with boxes"
    for study_id in sorted(with_boxes):
        doc = docs[study_id]
        page.goto(console_url + f"study/{study_id}")
        assert_not_for_clinical_use(page)
        image = page.locator("#study-image")
        image.wait_for()
        page.wait_for_function("document.querySelector('#study-image').getBBox().width > 0")
        viewer = page.locator("#viewer")
        width, height = int(viewer.get_attribute("data-width")), int(viewer.get_attribute("data-height"))
        assert (width, height) == (doc["input"]["width"], doc["input"]["height"])
        shown = image.bounding_box()
        scale = shown["width"] / width
        rects = page.locator("rect.box").all()
        assert len(rects) == len(doc["detections"])
        labels = page.locator("text.box-label").all_text_contents()
        for rect, detection, label in zip(rects, doc["detections"], labels):
            x1, y1, x2, y2 = detection["box"]
            # The SVG's own coordinates are the original pixels ...
            got = [float(rect.get_attribute(a)) for a in ("x", "y", "width", "height")]
            assert got == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-6)
            assert label.startswith(detection["label"])
            # ... and where the browser put the box on screen, scaled back, lands on the same pixels.
            box = rect.bounding_box()
            on_screen = [
                (box["x"] - shown["x"]) / scale,
                (box["y"] - shown["y"]) / scale,
                (box["x"] + box["width"] - shown["x"]) / scale,
                (box["y"] + box["height"] - shown["y"]) / scale,
            ]
            assert on_screen == pytest.approx([x1, y1, x2, y2], abs=2 / scale + 1)
        findings = page.locator("table.findings tr[data-label]").all()
        assert len(findings) == len(doc["findings"])
        for row, finding in zip(findings, doc["findings"]):
            assert f"{finding['probability']:.3f}" in row.inner_text() and f"{finding['threshold']:.3f}" in row.inner_text()
            assert ("positive" in row.get_attribute("class")) == finding["positive"]
        assert "AI-generated draft, not for clinical use" in page.locator("#draft-report").inner_text()
        assert page.locator("svg.timeline g.attempt").count() >= 5  # validate, prepare, 3 models, store, telemetry
        for name in ("result.json", "report.txt"):
            response = page.request.get(console_url + f"study/{study_id}/{name}")
            assert response.ok and response.body() == (demo_dir / "results" / "results" / study_id / name).read_bytes()
    page.goto(console_url + "study/demo-dicom")
    page.wait_for_function("document.querySelector('#study-image').getBBox().width > 0")
    page.screenshot(path=str(screenshots / "console-study.png"), full_page=True)


def test_monochrome1_dicom_is_shown_with_bone_bright(page, console_url: str, demo_dir: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(demo_dir / "images" / "incoming" / "demo-dicom" / "study.dcm")
    assert dataset.PhotometricInterpretation == "MONOCHROME1"  # low stored values are white
    stored = dataset.pixel_array.astype(np.float32)
    page.goto(console_url + "study/demo-dicom")
    page.wait_for_function("document.querySelector('#study-image').getBBox().width > 0")
    assert "MONOCHROME1" in page.locator("figcaption").inner_text()
    page.evaluate("document.querySelectorAll('g.detection').forEach(g => g.remove())")  # the picture alone
    shot = cv2.imdecode(np.frombuffer(page.locator("#viewer").screenshot(), np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    shot = cv2.resize(shot, (stored.shape[1], stored.shape[0]), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(stored, 10), np.percentile(stored, 90)
    bone, air = shot[stored <= low].mean(), shot[stored >= high].mean()
    assert bone > air + 100, (bone, air)  # the lowest stored values (bone, in MONOCHROME1) are the brightest on screen
    # The served picture is prepare's decoding: it runs opposite to the stored values, pixel for pixel.
    served = cv2.imdecode(
        np.frombuffer(page.request.get(console_url + "study/demo-dicom/image.png").body(), np.uint8), cv2.IMREAD_GRAYSCALE
    )
    assert served.shape == stored.shape
    assert np.corrcoef(served.ravel().astype(np.float32), stored.ravel())[0, 1] < -0.99


def test_dashboard_numbers_are_the_named_queries_numbers(page, console_url: str, demo_dir: Path, screenshots: Path) -> None:
    runner = DuckDBQueryRunner(demo_dir / "telemetry")  # the plain runner, independent of the console's snapshot
    for days in (7, 1):
        page.goto(console_url + f"dashboard?days={days}")
        assert_not_for_clinical_use(page)
        assert page.locator(".ranges a[aria-current]").inner_text() == f"{days} day{'s' if days > 1 else ''}"
        for name in DASHBOARD_QUERIES:
            expected = runner.run(name, days=days)
            rows = page.locator(f'details[data-query="{name}"] tbody tr').all()
            shown = [tuple(json.loads(cell.get_attribute("data-value")) for cell in row.locator("td").all()) for row in rows]
            assert page.locator(f'details[data-query="{name}"] thead th').all_text_contents() == expected.columns
            assert shown == [tuple(v for v in row) for row in expected.rows[:100]], name
            assert page.locator(f'details[data-query="{name}"]').get_attribute("data-rows") == str(len(expected.rows))
            everything = page.request.get(console_url + f"query/{name}.json?days={days}").json()
            assert everything["columns"] == expected.columns and everything["rows"] == expected.as_dicts(), name
        throughput = runner.run("throughput_per_minute", days=days).as_dicts()
        assert page.locator("#total-studies").inner_text() == str(sum(r["studies"] for r in throughput)) == "9"
        cost = runner.run("cost_breakdown", days=days).as_dicts()
        per_1000 = sum(r["usd_per_1000_studies"] for r in cost if r["basis"] == "per study")
        assert page.locator("#usd-per-1000").inner_text() == f"${per_1000:.4f}"
        assert {r["service"] for r in cost} >= {"Lambda", "Step Functions", "Kinesis Data Streams", "Firehose", "S3"}
    # The EMF lines captured in the data dir, summed as CloudWatch would.
    page.goto(console_url + "dashboard?days=7")
    positives = sum(f["positive"] for doc in results(demo_dir).values() for f in doc["findings"])
    shown = sum(float(r.locator("td[data-col=sum]").inner_text()) for r in page.locator('#emf tr[data-metric="PositiveFindings"]').all())
    assert shown == positives
    page.screenshot(path=str(screenshots / "console-dashboard.png"), full_page=True)


def test_the_console_is_read_only_and_refuses_what_it_does_not_serve(console_url: str) -> None:
    request = urllib.request.Request(console_url + "studies", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    for path in ("study/..%2Fsecret", "study/no-such-study", "study/demo-001/../../etc", "nothing-here"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(console_url + path, timeout=10)
        assert missing.value.code == 404, path
    with urllib.request.urlopen(console_url + "studies", timeout=10) as response:
        assert "script-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_static_report_has_every_page_and_an_overlay_per_study(tmp_path: Path, demo_dir: Path, page, capsys) -> None:
    out = tmp_path / "report"
    assert radstream(["report", "--data-dir", str(demo_dir), "--out", str(out)]) == 0
    docs = results(demo_dir)
    assert (out / "index.html").is_file() and all((out / f"dashboard-{d}d.html").is_file() for d in (1, 7, 30, 90))
    for study_id in list(docs) + list(failures(demo_dir)):
        assert (out / "study" / f"{study_id}.html").is_file()
    for study_id, doc in docs.items():
        plain = cv2.imread(str(out / "study" / study_id / "image.png"), cv2.IMREAD_GRAYSCALE)
        overlay = cv2.imread(str(out / "study" / study_id / "overlay.png"), cv2.IMREAD_COLOR)
        assert overlay.shape[:2] == plain.shape == (doc["input"]["height"], doc["input"]["width"])
        for x1, _y1, x2, y2 in (d["box"] for d in doc["detections"]):
            edge = overlay[int(round(y2)), int(x1 + 2) : int(x2 - 2)]
            assert (np.abs(edge[:, 2].astype(int) - edge[:, 0].astype(int)) > 60).mean() > 0.8  # a coloured line, not the gray picture
    page.goto((out / "study" / "demo-dicom.html").as_uri())
    assert_not_for_clinical_use(page)
    assert page.locator("rect.box").count() == len(docs["demo-dicom"]["detections"])
    page.goto((out / "index.html").as_uri())
    assert page.locator("tr[data-study]").count() == len(docs) + len(failures(demo_dir))
    page.click("text=Dashboard")
    assert page.url.endswith("dashboard-7d.html") and page.locator("#total-studies").inner_text() == "9"


def test_throughput_buckets_keep_every_study_on_a_time_axis() -> None:
    rows = [
        {"minute_utc": f"2026-12-0{d} {h:02d}:{m:02d}", "studies": 2, "succeeded": 1, "failed": 1}
        for d in (1, 2, 3)
        for h in (0, 11, 23)
        for m in (0, 59)
    ]
    bucket, labels, succeeded, failed = per_bucket(rows)
    assert bucket == 15 and len(labels) == 288 and labels[0] == "2026-12-01 00:00"
    assert sum(succeeded) == sum(failed) == len(rows)
    assert per_bucket(rows[:2]) == (
        1,
        ["2026-12-01 00:00"] + [f"2026-12-01 00:{m:02d}" for m in range(1, 60)],
        [1.0] + [0.0] * 58 + [1.0],
        [1.0] + [0.0] * 58 + [1.0],
    )


def test_every_picture_is_prepare_s_decoding_whatever_the_container(page, console_url: str, demo_dir: Path) -> None:
    """8-bit and 16-bit PNG, JPEG, RGB PNG and the 12-bit MONOCHROME1 DICOM: the served picture is prepare's decoded pixels."""
    from shared.pixels import decode_dicom, decode_raster

    containers = set()
    for study_id, doc in results(demo_dir).items():
        raw = (demo_dir / doc["input"]["image"]["bucket"] / doc["input"]["image"]["key"]).read_bytes()
        decoded = decode_dicom(raw, study_id) if raw[128:132] == b"DICM" else decode_raster(raw, study_id)
        containers.add((Path(doc["input"]["image"]["key"]).suffix, decoded.bit_depth, decoded.photometric))
        expected = np.round(np.clip(decoded.pixels, 0, 1) * 255).astype(np.uint8)
        served = cv2.imdecode(
            np.frombuffer(page.request.get(console_url + f"study/{study_id}/image.png").body(), np.uint8), cv2.IMREAD_UNCHANGED
        )
        assert served.dtype == np.uint8 and np.array_equal(served, expected), study_id
    assert {(".png", 8, "MONOCHROME2"), (".png", 16, "MONOCHROME2"), (".jpg", 8, "MONOCHROME2"), (".dcm", 12, "MONOCHROME1")} <= containers
