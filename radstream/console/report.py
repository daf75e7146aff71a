"""`radstream report --out DIR`: the console's pages as static HTML (and a PNG with the boxes drawn per study), to share without a server."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from radstream.console.data import ConsoleData, StudyFilter
from radstream.console.pages import DASHBOARD_QUERIES, RANGES, Pages, StaticLinks
from shared.errors import ObjectNotFound

ALL_DAYS = 3650  # the static studies list is every study of the last ten years, not a window
PER_PAGE = 100


@dataclass
class ReportSummary:
    out: Path
    studies: int
    pages: int
    images: int
    skipped: list[str] = field(default_factory=list)  # records in the bucket that could not be read (torn, not a record)


def write_report(data: ConsoleData, out: Path) -> ReportSummary:
    out = Path(out)
    (out / "study").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).resolve().parent / "static" / "console.css", out / "console.css")
    pages = Pages(data)
    flt = StudyFilter(days=ALL_DAYS)
    first = data.studies(flt, 1, PER_PAGE)
    written = 0
    for number in range(1, first.pages + 1):
        name = "index.html" if number == 1 else f"studies-{number}.html"
        (out / name).write_text(pages.studies(StaticLinks(), flt, number, PER_PAGE))
        written += 1
    (out / "query").mkdir(exist_ok=True)
    for days in RANGES:
        (out / f"dashboard-{days}d.html").write_text(pages.dashboard(StaticLinks(), days))
        written += 1
        for name in DASHBOARD_QUERIES:
            (out / "query" / f"{name}-{days}d.json").write_text(pages.query_json(name, days))
    images = 0
    rows = data.all_rows()
    for row in rows:
        (out / "study" / f"{row.study_id}.html").write_text(pages.study(StaticLinks(up="../"), row.study_id))
        written += 1
        folder = out / "study" / row.study_id
        folder.mkdir(exist_ok=True)
        for name in ("result.json", "report.txt", "exports.json", "error.json"):
            try:
                (folder / name).write_bytes(data.raw(row.study_id, name))
            except ObjectNotFound:
                pass
        detail = data.study(row.study_id)
        if detail.status == "succeeded" and not detail.image_error:
            image = data.image(row.study_id, detail.document)
            (folder / "image.png").write_bytes(image.png)
            (folder / "overlay.png").write_bytes(image.overlay_png(detail.document.get("detections", [])))
            images += 1
    return ReportSummary(out, len(rows), written, images, data.skipped)
