"""What the console reads, in either mode, and nothing it writes: results and failure records through the object
store port, template.yaml's named queries through the analytics runner, traces and EMF lines from the data dir.

Local: the data dir's folders (LocalObjectStore), DuckDB over the lake. AWS: S3 (shared.wiring.object_store) and
Athena (AthenaQueryRunner); traces are in X-Ray and metrics in CloudWatch there, so those panels say where to look.
"""

from __future__ import annotations

import functools
import logging
import json
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from radstream.analytics import LAKE_PREFIX, DuckDBQueryRunner, QueryResult, quarantine_object, read_lake_object
from radstream.template import Template
from shared.contracts import ExportStatus, StudyNotifications, notifications_key
from shared.errors import ConfigurationError, ObjectNotFound
from shared.metrics import EmfLog, MetricSummary
from shared import notifications
from shared.priority import rank
from shared.storage import ObjectStore

_PARTITION = re.compile(r"/dt=(?P<dt>[^/]+)/hour=(?P<hour>[^/]+)/[^/]+$")
SAFE_STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESULT_KEY = re.compile(r"^results/(?P<study>[^/]+)/result\.json$")
FAILURE_KEY = re.compile(r"^failed/(?P<study>[^/]+)/error\.json$")
DISPLAY_MAX_SIDE = 2048  # the served picture's longer side; boxes stay in original pixels (the SVG's viewBox)


class Background:
    """Runs `work` in a thread when poked, one run at a time: pages answer from what is loaded and never wait for a listing."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self._running = threading.Lock()

    def poke(self) -> None:
        if self._running.acquire(blocking=False):
            threading.Thread(target=self._run, name="radstream-console-refresh", daemon=True).start()

    def _run(self) -> None:
        try:
            self.work()
        except Exception as e:  # the next poke tries again; the page keeps what it had
            logging.getLogger("radstream.console").warning(
                "background refresh failed", extra={"error_type": type(e).__name__, "reason": str(e)}
            )
        finally:
            self._running.release()


class LakeSnapshotRunner(DuckDBQueryRunner):
    """The named queries over an in-memory copy of the local lake, topped up with the delivery objects that
    appeared since the last query. The SQL is the template's, translated as DuckDBQueryRunner translates it;
    only the table under the view differs (a table instead of read_json over every file on every query),
    so a dashboard over ten thousand delivery objects does not re-read them per chart."""

    def __init__(self, lake_root: Path, template: Template | Path | None = None, refresh_s: float = 2.0) -> None:
        super().__init__(lake_root, template)
        import duckdb

        self.refresh_s = refresh_s
        self._files: set[str] = set()
        self.quarantined: list[str] = []  # lake objects found unreadable and moved to .quarantine/
        self._checked = float("-inf")
        self._lock = threading.Lock()  # the connection: one statement at a time
        self._refresh_lock = threading.Lock()
        self._background = Background(self.refresh)
        schema, table, columns = self.table
        self._columns = {**columns, "dt": "VARCHAR", "hour": "VARCHAR"}
        self._target = f'"{schema}"."{table}"'
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        self._con.execute(f"CREATE TABLE {self._target} ({', '.join(f'{chr(34)}{c}{chr(34)} {t}' for c, t in self._columns.items())})")

    def refresh(self, force: bool = False) -> int:
        """Load the delivery objects not loaded yet; returns how many. At most every refresh_s unless forced.

        The objects are unpacked here and handed to DuckDB as one NDJSON file, each line given its object's dt/hour
        partition as Hive-style paths give them to read_json: DuckDB opening ten thousand small gzip files one by
        one takes minutes where this takes a second or two.
        """
        with self._refresh_lock:
            now = time.monotonic()
            if not force and now - self._checked < self.refresh_s:
                return 0
            self._checked = now
            found = {str(p) for p in self.lake_root.glob(f"{LAKE_PREFIX}/dt=*/hour=*/*.json.gz")}
            # Objects were removed (`radstream lake compact` merged them into new ones): load the lake afresh rather
            # than keep their rows beside the merged objects' copies. The swap happens under the query lock.
            reset = bool(self._files - found)
            if reset:
                self._files = set()
            new = sorted(found - self._files)
            if not new:
                if reset:
                    with self._lock:
                        self._con.execute(f"DELETE FROM {self._target}")
                return 0
            with tempfile.NamedTemporaryFile("wb", suffix=".ndjson", prefix="radstream-console-lake-") as batch:
                for path in new:
                    partition = _PARTITION.search(path.replace(os.sep, "/"))
                    if not partition:
                        continue
                    tail = f',"dt":"{partition["dt"]}","hour":"{partition["hour"]}"}}\n'.encode()
                    try:
                        records = read_lake_object(Path(path))
                    except FileNotFoundError:  # merged away by a compaction since the listing: its records are in the new object
                        found.discard(path)
                        continue
                    except (ValueError, OSError) as e:  # torn by a crash: moved aside and named; the dashboards answer from the rest
                        self.quarantined.append(quarantine_object(self.lake_root, Path(path), str(e)))
                        found.discard(path)
                        continue
                    for line in records:
                        line = line.rstrip()
                        if line.endswith(b"}"):
                            batch.write(line[:-1] + tail)
                batch.flush()
                struct = ", ".join(f"'{c}': '{t}'" for c, t in self._columns.items())
                names = ", ".join(f'"{c}"' for c in self._columns)
                source = batch.name.replace("'", "''")
                with self._lock:
                    if reset:
                        self._con.execute(f"DELETE FROM {self._target}")
                    self._con.execute(
                        f"INSERT INTO {self._target} ({names}) SELECT {names} FROM read_json('{source}', format = 'newline_delimited', columns = {{{struct}}})"
                    )
            self._files.update(p for p in new if p in found)
            return len(new)

    def run(self, name: str, **params: Any) -> QueryResult:
        import duckdb
        from decimal import Decimal

        from shared.errors import PermanentError

        values = self.query(name).bind(params)
        sql = self.translate(name)
        if self._checked == float("-inf"):
            self.refresh()  # the first query waits: nothing is loaded yet
        else:
            self._background.poke()  # new objects arrive for a later query; this one answers from what is loaded
        model_tables = "${TelemetryTable}" not in self.query(name).sql  # the model queries read the lake's small model tables
        with self._lock:
            try:
                if model_tables:
                    for view in self.model_tables_sql():
                        self._con.execute(view)
                cursor = self._con.execute(sql, values)
                columns = [d[0] for d in cursor.description]
                rows = [tuple(float(v) if isinstance(v, Decimal) else v for v in row) for row in cursor.fetchall()]
            except duckdb.Error as e:
                raise PermanentError(f"query {name} failed in DuckDB: {e}") from e
        return QueryResult(columns, rows)


class CachedQueries:
    """Query results kept for `ttl_s`: Athena takes seconds per query and bills per scan, so a page reload
    within the TTL reuses the last answer. Each result carries when it was computed (shown on the page)."""

    def __init__(self, runner: Any, ttl_s: float) -> None:
        self.runner = runner
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[float, QueryResult]] = {}
        self._lock = threading.Lock()

    def run(self, name: str, **params: Any) -> QueryResult:
        key = (name, tuple(sorted(params.items())))
        with self._lock:
            hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        result = self.runner.run(name, **params)
        with self._lock:
            self._cache[key] = (time.monotonic(), result)
        return result

    def description(self, name: str) -> str:
        return self.runner.query(name).description


@dataclass
class StudyRow:
    """One line of the studies page: what the result or failure record says, plus the end-to-end time from the lake."""

    study_id: str
    status: str
    at: str  # completed_at / failed_at, ISO 8601 UTC
    positives: list[str] = field(default_factory=list)
    boxes: int | None = None
    models: str = ""
    stage: str | None = None
    error_type: str | None = None
    message: str | None = None
    priority: str = "routine"

    @property
    def day(self) -> str:
        return self.at[:10]


def row_from_result(doc: dict[str, Any]) -> StudyRow:
    models = ", ".join(f"{m['name']} v{m['version']}" for m in doc.get("models", {}).values())
    return StudyRow(
        study_id=doc["study_id"],
        status="succeeded",
        at=str(doc.get("completed_at", "")),
        positives=[f["label"] for f in doc.get("findings", []) if f.get("positive")],
        boxes=len(doc.get("detections", [])),
        models=models,
        priority=str(doc.get("priority", "routine")),
    )


def row_from_failure(doc: dict[str, Any]) -> StudyRow:
    return StudyRow(
        study_id=doc["study_id"],
        status="failed",
        at=str(doc.get("failed_at", "")),
        stage=doc.get("stage"),
        error_type=doc.get("error_type"),
        message=doc.get("message"),
    )


class StudyIndex:
    """Every study's row, read once per object and kept: a refresh lists the results bucket and reads only keys it
    has not seen. When a study has both a result and a failure record (re-run), the later one is its row."""

    def __init__(self, store: ObjectStore, bucket: str, refresh_s: float = 2.0, readers: int = 1) -> None:
        self.store = store
        self.bucket = bucket
        self.refresh_s = refresh_s
        self.readers = readers
        self._seen: set[str] = set()
        self.skipped: dict[str, str] = {}  # key -> why: records that could not be shown
        self._rows: dict[str, StudyRow] = {}
        self._by_kind: dict[str, dict[str, StudyRow]] = {"result": {}, "failure": {}}
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._background = Background(self.refresh)

    def _read(self, key: str) -> tuple[str, StudyRow] | None:
        try:
            doc = json.loads(self.store.get_bytes(self.bucket, key))
            row = ("result", row_from_result(doc)) if key.startswith("results/") else ("failure", row_from_failure(doc))
        except ObjectNotFound:
            return None  # removed meanwhile
        except (ValueError, KeyError, TypeError, AttributeError):
            # Torn by a crash, or not a record: counted and shown (`skipped`), read again on the next refresh (resume
            # moves it aside and writes the study's record anew).
            self.skipped[key] = "does not parse"
            return None
        self.skipped.pop(key, None)
        return row

    def refresh(self, force: bool = False) -> None:
        with self._refresh_lock:
            if not force and time.monotonic() - self._checked < self.refresh_s:
                return
            keys = [k for prefix in ("results/", "failed/") for k in self.store.list_keys(self.bucket, prefix)]
            new = [k for k in keys if k not in self._seen and (RESULT_KEY.match(k) or FAILURE_KEY.match(k))]
            if self.readers > 1 and len(new) > 1:
                with ThreadPoolExecutor(self.readers) as pool:
                    read = list(pool.map(self._read, new))
            else:
                read = [self._read(k) for k in new]
            with self._lock:
                for key, item in zip(new, read):
                    if key not in self.skipped:
                        self._seen.add(key)
                    if item:
                        self._put(*item)
                for key in [k for k in self.skipped if k not in keys]:  # moved aside or removed since
                    del self.skipped[key]
            self._checked = time.monotonic()

    def _put(self, kind: str, row: StudyRow) -> None:
        self._by_kind[kind][row.study_id] = row
        candidates = [r for r in (self._by_kind["result"].get(row.study_id), self._by_kind["failure"].get(row.study_id)) if r]
        self._rows[row.study_id] = max(candidates, key=lambda r: r.at)

    def update(self, kind: str, row: StudyRow) -> None:
        """A study page read a fresher record than the index holds."""
        with self._lock:
            self._put(kind, row)

    def rows(self) -> list[StudyRow]:
        if self._checked == float("-inf"):
            self.refresh()  # the first read waits: there is nothing to answer from yet
        elif time.monotonic() - self._checked >= self.refresh_s:
            self._background.poke()  # new records show on a later load; this one answers from the index
        with self._lock:
            return list(self._rows.values())


@dataclass(frozen=True)
class StudyFilter:
    status: str = ""
    finding: str = ""
    text: str = ""
    day: str = ""  # YYYY-MM-DD
    days: int = 30  # the window, as the queries take it

    def keep(self, row: StudyRow, since: str) -> bool:
        return (
            (not self.status or row.status == self.status)
            and (not self.finding or self.finding in row.positives)
            and (not self.text or self.text.lower() in row.study_id.lower())
            and (not self.day or row.day == self.day)
            and row.day >= since
        )


@dataclass
class StudyPage:
    rows: list[StudyRow]
    total: int
    page: int
    pages: int
    end_to_end: dict[str, float | None]
    findings: list[str]
    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)  # records in the bucket that could not be read as one


@dataclass
class StudyDetail:
    study_id: str
    status: str
    document: dict[str, Any]  # result.json or error.json as stored
    width: int | None = None
    height: int | None = None
    photometric: str | None = None
    bit_depth: int | None = None
    image_error: str | None = None
    trace: dict[str, Any] | None = None
    runs: list[str] = field(default_factory=list)
    trace_note: str | None = None
    # DICOM studies: what became of the result's exports (results/<study_id>/exports.json, shared.contracts.ExportStatus),
    # only when it is about this result's run (an earlier run's status would describe other exports).
    exports: dict[str, Any] | None = None
    # The critical-finding notifications (results/<study_id>/notifications.json): each one's delivery and its trail.
    notifications: StudyNotifications | None = None


@dataclass
class WorklistRow:
    """One line of the worklist: a study with its result, most urgent first (docs/triage.md)."""

    study_id: str
    priority: str
    critical: list[str]  # the rules that fired
    unacknowledged: int
    arrived_at: str  # ISO 8601 UTC: the upload, or the result's time where the arrival is not recorded
    waiting_s: float
    positives: list[str]


class RenderedImage:
    """A study's image as prepare decodes it (bone bright, VOI applied), scaled to at most DISPLAY_MAX_SIDE."""

    def __init__(self, gray: np.ndarray, width: int, height: int, photometric: str, bit_depth: int) -> None:
        self.gray = gray  # uint8, display size
        self.width, self.height = width, height  # original pixels
        self.photometric, self.bit_depth = photometric, bit_depth

    @functools.cached_property
    def png(self) -> bytes:
        return cv2.imencode(".png", self.gray)[1].tobytes()

    def overlay_png(self, detections: list[dict[str, Any]]) -> bytes:
        """The picture with each box drawn and labelled, for sharing without a browser (radstream report)."""
        scale = self.gray.shape[1] / self.width
        canvas = cv2.cvtColor(self.gray, cv2.COLOR_GRAY2BGR)
        thickness = max(2, round(canvas.shape[1] / 400))
        for d in detections:
            x1, y1, x2, y2 = (round(v * scale) for v in d["box"])
            colour = BOX_COLOURS_BGR.get(d["label"], (0, 200, 255))
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
            text = f"{d['label']} {d['score']:.2f}"
            font_scale = max(0.5, canvas.shape[1] / 1400)
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            top = max(th + base, y1)
            cv2.rectangle(canvas, (x1, top - th - base), (x1 + tw, top), colour, -1)
            cv2.putText(canvas, text, (x1, top - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
        banner = "AI reference models - not for clinical use"
        cv2.putText(
            canvas,
            banner,
            (8, canvas.shape[0] - 10),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.5, canvas.shape[1] / 1600),
            (0, 0, 255),
            1,
            cv2.LINE_AA,
        )
        return cv2.imencode(".png", canvas)[1].tobytes()


BOX_COLOURS_BGR = {"nodule_mass": (60, 80, 255), "focal_opacity": (0, 200, 255)}


def decode_for_display(data: bytes, study_id: str) -> RenderedImage:
    """Decode exactly as the prepare stage does (shared.pixels, not a second decoder), then to 8 bits for a screen."""
    from shared.imageheader import sniff_format
    from shared.pixels import decode_dicom, decode_raster

    kind = sniff_format(data[:132])
    if kind is None:
        raise ConfigurationError(f"study {study_id}: the stored image is not PNG, JPEG or DICOM")
    decoded = decode_dicom(data, study_id) if kind == "dicom" else decode_raster(data, study_id)
    pixels = np.clip(decoded.pixels, 0.0, 1.0)
    h, w = pixels.shape
    scale = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
    if scale < 1.0:
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    gray = np.round(pixels * 255.0).astype(np.uint8)
    return RenderedImage(gray, w, h, decoded.photometric, decoded.bit_depth)


class ConsoleData:
    """The console's one source of data; the web app and the static report both read through it."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        results_bucket: str,
        queries: CachedQueries,
        mode: str,
        data_dir: Path | None = None,
        refresh_s: float = 2.0,
        readers: int = 1,
        clock: Callable[[], datetime] | None = None,
        lake_bucket: str = "telemetry",
    ) -> None:
        self.store = store
        self.results_bucket = results_bucket
        self.lake_bucket = lake_bucket  # where feedback from the console goes (the telemetry bucket's feedback table)
        self.queries = queries
        self.mode = mode
        self.data_dir = Path(data_dir) if data_dir else None
        self.index = StudyIndex(store, results_bucket, refresh_s, readers)
        self.emf = EmfLog(self.data_dir) if self.data_dir else None
        self.clock = clock or (lambda: datetime.now(UTC))
        self._images: OrderedDict[str, RenderedImage] = OrderedDict()
        self._images_lock = threading.Lock()

    def warm(self) -> None:
        """Read every record, lake object and EMF line once, before the first page rather than during it."""
        self.index.refresh(force=True)
        refresh = getattr(self.queries.runner, "refresh", None)
        if refresh:
            refresh(force=True)
        if self.emf:
            self.emf.refresh()
        import shared.pixels  # noqa: F401  (the decoders and their libraries: loaded now, not on the first study view)

    # --- studies ---
    def studies(self, flt: StudyFilter, page: int = 1, per_page: int = 50) -> StudyPage:
        since = (self.clock() - timedelta(days=flt.days)).strftime("%Y-%m-%d")
        everything = self.index.rows()
        in_window = [r for r in everything if r.day >= since]
        rows = [r for r in in_window if flt.keep(r, since)]
        rows.sort(key=lambda r: (r.at, r.study_id), reverse=True)
        pages = max(1, -(-len(rows) // per_page))
        page = min(max(1, page), pages)
        shown = rows[(page - 1) * per_page : page * per_page]
        e2e = {str(r["study_id"]): r["end_to_end_ms"] for r in self.queries.run("study_end_to_end", days=flt.days).as_dicts()}
        findings = sorted({label for r in in_window for label in r.positives})
        counts = {
            "all": len(in_window),
            "succeeded": sum(r.status == "succeeded" for r in in_window),
            "failed": sum(r.status == "failed" for r in in_window),
        }
        return StudyPage(
            shown, len(rows), page, pages, {r.study_id: e2e.get(r.study_id) for r in shown}, findings, counts, sorted(self.index.skipped)
        )

    @property
    def skipped(self) -> list[str]:
        """The records the index could not read (torn or not a record), by key."""
        return sorted(self.index.skipped)

    def all_rows(self) -> list[StudyRow]:
        return sorted(self.index.rows(), key=lambda r: (r.at, r.study_id), reverse=True)

    # --- one study ---
    def raw(self, study_id: str, name: str) -> bytes:
        """result.json, report.txt, exports.json or error.json, as stored."""
        check_study_id(study_id)
        prefix = "failed" if name == "error.json" else "results"
        if name not in ("result.json", "report.txt", "exports.json", "error.json"):
            raise ObjectNotFound(f"study {study_id}: no {name}")
        return self.store.get_bytes(self.results_bucket, f"{prefix}/{study_id}/{name}")

    def study(self, study_id: str) -> StudyDetail:
        check_study_id(study_id)
        documents = {}
        for kind, key in (("result", f"results/{study_id}/result.json"), ("failure", f"failed/{study_id}/error.json")):
            try:
                documents[kind] = json.loads(self.store.get_bytes(self.results_bucket, key))
            except ObjectNotFound:
                pass
        if not documents:
            raise ObjectNotFound(f"study {study_id}: no result and no failure record in bucket {self.results_bucket}")
        rows = {"result": row_from_result, "failure": row_from_failure}
        latest_kind = max(documents, key=lambda k: rows[k](documents[k]).at)
        for kind, doc in documents.items():
            self.index.update(kind, rows[kind](doc))
        doc = documents[latest_kind]
        detail = StudyDetail(study_id, "succeeded" if latest_kind == "result" else "failed", doc)
        if latest_kind == "result":
            try:
                image = self.image(study_id, doc)
                detail.width, detail.height, detail.photometric, detail.bit_depth = (
                    image.width,
                    image.height,
                    image.photometric,
                    image.bit_depth,
                )
            except Exception as e:  # the page still shows the findings; the reason is shown in place of the image
                detail.image_error = f"{type(e).__name__}: {e}"
            detail.exports = self.export_status(study_id, doc)
            detail.notifications = self.notifications(study_id)
        self._add_trace(detail)
        return detail

    # --- triage ---
    def notifications(self, study_id: str) -> StudyNotifications | None:
        check_study_id(study_id)
        try:
            return StudyNotifications.model_validate_json(self.store.get_bytes(self.results_bucket, notifications_key(study_id)))
        except ObjectNotFound:
            return None
        except ValueError:
            return None  # unreadable: the study page says nothing rather than something wrong

    def worklist(self) -> list[WorklistRow]:
        """Every study with a result, sorted by priority (stat first), then critical finding unacknowledged, then time
        waiting (longest first)."""
        now = self.clock()
        ledgers: dict[str, StudyNotifications] = {}
        for key in self.store.list_keys(self.results_bucket, "results/"):
            if key.endswith("/notifications.json"):
                study_id = key.split("/")[1]
                found = self.notifications(study_id) if SAFE_STUDY_ID.match(study_id) else None
                if found is not None:
                    ledgers[study_id] = found
        rows = []
        for row in self.index.rows():
            if row.status != "succeeded":
                continue
            ledger = ledgers.get(row.study_id)
            arrived = ledger.arrived_at.isoformat() if ledger and ledger.arrived_at else row.at
            try:
                waited = (now - datetime.fromisoformat(arrived.replace("Z", "+00:00"))).total_seconds()
            except ValueError:
                waited = 0.0
            notes = ledger.notifications if ledger else []
            rows.append(
                WorklistRow(
                    study_id=row.study_id,
                    priority=row.priority,
                    critical=[n.rule for n in notes],
                    unacknowledged=sum(n.acknowledged_at is None for n in notes),
                    arrived_at=arrived,
                    waiting_s=max(0.0, waited),
                    positives=row.positives,
                )
            )
        rows.sort(key=lambda r: (rank(r.priority), 0 if r.unacknowledged else 1 if r.critical else 2, -r.waiting_s, r.study_id))
        return rows

    def acknowledge(self, study_id: str, rule: str, by: str) -> None:
        """A person saw a study's notification: recorded in its trail (services/notify), never deleted."""
        check_study_id(study_id)
        notifications.acknowledge(self.store, self.results_bucket, study_id, rule, by)

    def export_status(self, study_id: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """The study's export status for this result's run, as stored; None for a study with no exports (PNG/JPEG)."""
        try:
            status = ExportStatus.model_validate_json(self.store.get_bytes(self.results_bucket, f"results/{study_id}/exports.json"))
        except ObjectNotFound:
            return None
        except ValueError:
            return {"status": "unreadable", "message": "results/" + study_id + "/exports.json cannot be read"}
        if status.execution_id != result.get("execution_id"):
            return None
        return status.model_dump(mode="json", exclude_none=True)

    def image(self, study_id: str, result: dict[str, Any] | None = None) -> RenderedImage:
        check_study_id(study_id)
        with self._images_lock:
            if study_id in self._images:
                self._images.move_to_end(study_id)
                return self._images[study_id]
        result = result or json.loads(self.store.get_bytes(self.results_bucket, f"results/{study_id}/result.json"))
        ref = result["input"]["image"]
        image = decode_for_display(self.store.get_bytes(ref["bucket"], ref["key"]), study_id)
        with self._images_lock:
            self._images[study_id] = image
            while len(self._images) > 32:
                self._images.popitem(last=False)
        return image

    def _add_trace(self, detail: StudyDetail) -> None:
        if self.data_dir is None:
            detail.trace_note = 'In AWS the trace is in X-Ray: filter on annotation.study_id = "' + detail.study_id + '".'
            return
        folder = self.data_dir / "traces" / detail.study_id
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        if not files:
            detail.trace_note = "No trace recorded for this study in this data dir."
            return
        detail.runs = [p.stem for p in reversed(files)]
        detail.trace = json.loads(files[-1].read_text())

    # --- dashboard ---
    def query(self, name: str, **params: Any) -> QueryResult:
        return self.queries.run(name, **params)

    def metrics(self, days: int) -> list[MetricSummary] | None:
        if self.emf is None:
            return None
        return self.emf.summary(since=self.clock() - timedelta(days=days))


def check_study_id(study_id: str) -> None:
    if not SAFE_STUDY_ID.match(study_id):
        raise ObjectNotFound("no such study")


def local_data(
    data_dir: Path, *, results_bucket: str = "results", telemetry_bucket: str = "telemetry", refresh_s: float = 2.0
) -> ConsoleData:
    from shared.storage import LocalObjectStore

    data_dir = Path(data_dir)
    runner = LakeSnapshotRunner(data_dir / telemetry_bucket, refresh_s=refresh_s)
    return ConsoleData(
        store=LocalObjectStore(data_dir),
        results_bucket=results_bucket,
        queries=CachedQueries(runner, ttl_s=0),
        mode="local",
        data_dir=data_dir,
        refresh_s=refresh_s,
        lake_bucket=telemetry_bucket,
    )


def aws_data(settings: Any, *, workgroup: str, database: str, ttl_s: float = 60.0) -> ConsoleData:
    from radstream.analytics import AthenaQueryRunner
    from shared.wiring import boto3_client, object_store

    runner = AthenaQueryRunner(boto3_client("athena"), workgroup=workgroup, database=database)
    return ConsoleData(
        store=object_store(settings),
        results_bucket=settings.results_bucket,
        queries=CachedQueries(runner, ttl_s=ttl_s),
        mode="aws",
        refresh_s=ttl_s,
        readers=16,
        lake_bucket=settings.telemetry_bucket,
    )
