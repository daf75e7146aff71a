"""Analytics port: the Athena named queries of template.yaml, run by DuckDB over the local lake or by Athena.

There is one copy of each query: the `AWS::Athena::NamedQuery` resources in template.yaml, written in
Athena's SQL (Trino). Locally, sqlglot translates them to DuckDB's dialect and DuckDB reads the lake the
telemetry sink writes (`<telemetry bucket>/telemetry/dt=YYYY-MM-DD/hour=HH/*.json.gz`, gzip NDJSON, one
`shared.contracts.TelemetryRecord` per line). On AWS the same SQL goes to Athena in the template's workgroup.

A query's `?` placeholders are Athena execution parameters; the line `-- parameters: days=7` in the SQL
names them, in order, with their defaults. Values are integers only (they are spliced in as SQL literals).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from radstream.cli_args import add_data_dir
from radstream.template import DEFAULT_TEMPLATE, Template
from shared.athena import AthenaExecutor, QueryResult
from shared.errors import ConfigurationError, PermanentError, StorageUnavailable
from shared.telemetry import LAKE_PREFIX  # the key prefix of the lake's layout, inside the telemetry bucket

READ_DIALECT = "athena"
LOCAL_DATABASE = "radstream"  # what `${GlueDatabase}` becomes in DuckDB: a schema holding the lake's view

PARTITION_COLUMNS: dict[str, str] = {"dt": "VARCHAR", "hour": "VARCHAR"}
_GLUE_TO_DUCKDB = {
    "string": "VARCHAR",
    "double": "DOUBLE",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "int": "INTEGER",
}
_PARAMETERS_LINE = re.compile(r"^\s*--\s*parameters:\s*(?P<spec>.*)$", re.MULTILINE)
_SUB_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_:.]+)\}")


@dataclass(frozen=True)
class NamedQuery:
    """One AWS::Athena::NamedQuery of the template, its SQL still holding the `${...}` of its !Sub."""

    name: str
    description: str
    sql: str
    parameters: tuple[tuple[str, int], ...] = ()  # (name, default), in the order of the `?` placeholders

    def bind(self, params: Mapping[str, Any]) -> list[int]:
        known = {name for name, _ in self.parameters}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigurationError(
                f"query {self.name} has no parameter {', '.join(unknown)} (it takes: {', '.join(sorted(known)) or 'none'})"
            )
        values = []
        for name, default in self.parameters:
            value = params.get(name, default)
            if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"query {self.name}: parameter {name} must be an integer, got {value!r}")
            values.append(value)
        return values


def _parse_parameters(name: str, sql: str) -> tuple[tuple[str, int], ...]:
    match = _PARAMETERS_LINE.search(sql)
    if not match:
        return ()
    parameters = []
    for item in filter(None, (part.strip() for part in match["spec"].split(","))):
        key, sep, default = item.partition("=")
        if not sep or not key.strip().isidentifier() or not re.fullmatch(r"-?\d+", default.strip()):
            raise ConfigurationError(f"named query {name}: bad parameter declaration {item!r} (want name=integer)")
        parameters.append((key.strip(), int(default)))
    return tuple(parameters)


def load_named_queries(template: Template | Path | None = None) -> dict[str, NamedQuery]:
    """The template's NamedQuery resources by Name, in template order."""
    template = template if isinstance(template, Template) else Template(Path(template or DEFAULT_TEMPLATE))
    queries: dict[str, NamedQuery] = {}
    for logical_id, resource in template.resources.items():
        if resource.get("Type") != "AWS::Athena::NamedQuery":
            continue
        props = resource.get("Properties", {})
        name, raw = props.get("Name"), props.get("QueryString")
        if isinstance(raw, dict) and "Fn::Sub" in raw:
            raw = raw["Fn::Sub"]
        if not isinstance(name, str) or not isinstance(raw, str):
            raise ConfigurationError(
                f"{template.path}: {logical_id} needs a literal Name and a QueryString (a string or a one-argument !Sub)"
            )
        if name in queries:
            raise ConfigurationError(f"{template.path}: two named queries called {name}")
        queries[name] = NamedQuery(name, str(props.get("Description", "")), raw, _parse_parameters(name, raw))
    return queries


def glue_names(template: Template, database: str) -> dict[str, str]:
    """What each Glue resource's `${LogicalId}` stands for in a query: the database given, the table's name."""
    names: dict[str, str] = {}
    for logical_id, resource in template.resources.items():
        if resource.get("Type") == "AWS::Glue::Database":
            names[logical_id] = database
        elif resource.get("Type") == "AWS::Glue::Table":
            names[logical_id] = resource["Properties"]["TableInput"]["Name"]
    return names


def render(query: NamedQuery, names: Mapping[str, str]) -> str:
    """Resolve the query's !Sub. Only Glue databases and tables may appear in it."""

    def replace(match: re.Match[str]) -> str:
        if match[1] not in names:
            raise ConfigurationError(f"named query {query.name}: cannot resolve ${{{match[1]}}} (only Glue databases and tables)")
        return names[match[1]]

    return _SUB_VARIABLE.sub(replace, query.sql)


def placeholders(sql: str) -> int:
    """How many `?` parameters an Athena statement has."""
    return len(list(sqlglot.parse_one(sql, read=READ_DIALECT).find_all(exp.Placeholder)))


def to_duckdb(sql: str) -> str:
    """Athena (Trino) SQL -> DuckDB SQL, one statement; anything sqlglot knows it cannot translate is an error."""
    try:
        statements = sqlglot.transpile(sql, read=READ_DIALECT, write="duckdb", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as e:
        raise ConfigurationError(f"cannot translate the query to DuckDB: {e}") from e
    if len(statements) != 1:
        raise ConfigurationError(f"a named query must be one statement, found {len(statements)}")
    return statements[0]


CACHE_DIR = ".cache"  # <lake root>/.cache/dt=…/hour=…/<digest>.parquet, written by `radstream lake compact`
QUARANTINE_DIR = ".quarantine"  # <lake root>/.quarantine/<the object's own path>: unreadable objects, kept, never read by a query
_LAKE_FILE = re.compile(r"""(/[^\s"':]+?\.(?:json\.gz|parquet))""")
_log = logging.getLogger("radstream.lake")


def quarantine_object(lake_root: Path, path: Path, reason: str) -> str:
    """Move an unreadable lake object aside, under .quarantine/ with its own relative path (kept, never deleted);
    returns that relative path. A warning names it: the queries answer from the rest of the lake."""
    from shared.atomicfile import fsync_dir, make_dirs

    lake_root, path = Path(lake_root), Path(path)
    relative = path.relative_to(lake_root)
    target = lake_root / QUARANTINE_DIR / relative
    make_dirs(target.parent)
    os.replace(path, target)
    fsync_dir(path.parent)
    fsync_dir(target.parent)
    _log.warning(
        "telemetry lake object is unreadable: moved to quarantine; the queries answer from the rest",
        extra={"object": relative.as_posix(), "reason": reason, "moved_to": (Path(QUARANTINE_DIR) / relative).as_posix()},
    )
    return relative.as_posix()


def read_lake_object(path: Path) -> list[bytes]:
    """A delivery object's record lines; ValueError (naming why, never a value) when it is torn, zero-filled or not
    gzip NDJSON: what a crash of the machine, or a failing disk, leaves of an object that was never synced."""
    import gzip
    import zlib

    try:
        data = gzip.decompress(Path(path).read_bytes())
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"not a whole gzip stream ({type(e).__name__})") from e
    lines = [line for line in data.splitlines() if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise ValueError(f"line {number} is not a record")
    return lines


def check_lake(lake_root: Path) -> tuple[int, list[tuple[str, str]]]:
    """Read every delivery object of the lake whole; quarantine each one that does not read. Returns (objects read,
    [(quarantined object, why)])."""
    lake_root = Path(lake_root)
    checked, bad = 0, []
    for path in sorted((lake_root / LAKE_PREFIX).glob("dt=*/hour=*/*.json.gz")):
        checked += 1
        try:
            read_lake_object(path)
        except FileNotFoundError:
            continue  # merged away by a compaction meanwhile
        except (ValueError, OSError) as e:
            bad.append((quarantine_object(lake_root, path, str(e)), str(e)))
    return checked, bad


def named_object(lake_root: Path, error: BaseException) -> Path | None:
    """The lake object a DuckDB error names (it names the file it could not read), if it is one of this lake's."""
    root = str(Path(lake_root).resolve())
    for candidate in _LAKE_FILE.findall(str(error)):
        path = Path(candidate)
        if str(path.resolve()).startswith(root + os.sep) and QUARANTINE_DIR not in path.parts and path.is_file():
            return path
    return None


def _sql_list(paths: list[str] | list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def json_source(globs: list[str], columns: Mapping[str, str]) -> str:
    """read_json over the lake's gzip NDJSON objects, typed as the Glue table, dt/hour from the Hive-style path."""
    struct = ", ".join(f"'{c}': '{t}'" for c, t in columns.items())
    hive_types = ", ".join(f"'{c}': '{t}'" for c, t in PARTITION_COLUMNS.items())
    return (
        f"read_json({_sql_list(globs)}, format = 'newline_delimited', compression = 'gzip', columns = {{{struct}}}, "
        f"hive_partitioning = true, hive_types = {{{hive_types}}})"
    )


def partition_digest(folder: Path) -> tuple[str, int]:
    """What a partition holds now (its objects' names and sizes, as a digest), and how many objects. Delivered and
    merged objects are never rewritten with other bytes, so the same names and sizes mean the same records."""
    import hashlib

    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(folder) if e.name.endswith(".json.gz"))
    return hashlib.sha256("\n".join(f"{n}\t{z}" for n, z in entries).encode()).hexdigest()[:32], len(entries)


def cache_path(lake_root: Path, folder: Path, digest: str) -> Path:
    return Path(lake_root) / CACHE_DIR / folder.parent.name / folder.name / f"{digest}.parquet"


def _partitions(lake_root: Path) -> Iterator[tuple[Path, Path, int]]:
    """(partition folder, its current columnar copy's path, its object count) for each partition holding objects."""
    for folder in sorted((Path(lake_root) / LAKE_PREFIX).glob("dt=*/hour=*")):
        try:
            digest, count = partition_digest(folder)
        except FileNotFoundError:
            continue
        if count:
            yield folder, cache_path(lake_root, folder, digest), count


def partition_sources(lake_root: Path) -> tuple[list[Path], list[Path]]:
    """(current columnar copies, partition folders without one). A partition with no object is in neither."""
    cached, uncached, _ = _sources(lake_root)
    return cached, uncached


def _sources(lake_root: Path) -> tuple[list[Path], list[Path], int]:
    """partition_sources, and how many objects the partitions without a copy hold."""
    cached, uncached, uncached_objects = [], [], 0
    for folder, copy, count in _partitions(lake_root):
        if copy.is_file():
            cached.append(copy)
        else:
            uncached.append(folder)
            uncached_objects += count
    return cached, uncached, uncached_objects


# From this many objects without a current columnar copy, `radstream query` says that compaction would help: every
# query reads each such object (~0.2 ms apiece on the dev machines; README Performance, the lake at 100,000 studies).
COMPACT_HINT_OBJECTS = 2_000
# A query moves aside at most this many unreadable objects before it gives up (`radstream lake check` reads them all).
MAX_QUARANTINED_PER_QUERY = 100


class _Queries:
    def __init__(self, template: Template | Path | None) -> None:
        self.template = template if isinstance(template, Template) else Template(Path(template or DEFAULT_TEMPLATE))
        self.queries = load_named_queries(self.template)

    def list_queries(self) -> list[str]:
        return list(self.queries)

    def query(self, name: str) -> NamedQuery:
        try:
            return self.queries[name]
        except KeyError:
            raise ConfigurationError(f"no named query {name!r} in {self.template.path} (there are: {', '.join(self.queries)})") from None


class DuckDBQueryRunner(_Queries):
    """The named queries over the local lake: `lake_root` is the telemetry bucket's folder (<data_dir>/telemetry)."""

    def __init__(self, lake_root: Path, template: Template | Path | None = None) -> None:
        super().__init__(template)
        self.lake_root = Path(lake_root)
        self.names = glue_names(self.template, LOCAL_DATABASE)
        self.table = self._table()
        # One DuckDB connection per runner, its view re-created only when the lake's listing changed (a fresh
        # in-memory database per query cost ~25 ms), and each query translated once: sqlglot is ~10 ms a query warm.
        self._duck_lock = threading.Lock()
        self._duck: Any = None
        self._view = ""
        self._translated: dict[str, str] = {}
        self.uncompacted = (0, 0)  # (objects, partitions) the view reads object by object, as of its last listing

    def _glue_tables(self) -> list[dict[str, Any]]:
        return [r["Properties"]["TableInput"] for r in self.template.resources.values() if r.get("Type") == "AWS::Glue::Table"]

    def _table(self) -> tuple[str, str, dict[str, str]]:
        """The telemetry table (the lake proper: partitions, compaction, columnar copies)."""
        tables = [t for t in self._glue_tables() if t["Name"] == LAKE_PREFIX]
        if len(tables) != 1:
            raise ConfigurationError(f"{self.template.path}: expected one AWS::Glue::Table named {LAKE_PREFIX}, found {len(tables)}")
        columns = {c["Name"]: _GLUE_TO_DUCKDB.get(c["Type"].lower(), "VARCHAR") for c in tables[0]["StorageDescriptor"]["Columns"]}
        return LOCAL_DATABASE, tables[0]["Name"], columns

    def model_tables_sql(self) -> list[str]:
        """The model tables beside telemetry (shared.lake_tables: model_outputs, feedback, ...): each a view over
        `<table>/<partition>=…/*.ndjson.gz` with its partition columns from the path, or an empty typed view."""
        from shared.lake_tables import SUFFIX

        views = []
        for t in self._glue_tables():
            if t["Name"] == LAKE_PREFIX:
                continue
            columns = {c["Name"]: _GLUE_TO_DUCKDB.get(c["Type"].lower(), "VARCHAR") for c in t["StorageDescriptor"]["Columns"]}
            keys = {k["Name"]: _GLUE_TO_DUCKDB.get(k["Type"].lower(), "VARCHAR") for k in t.get("PartitionKeys", [])}
            target = f'"{LOCAL_DATABASE}"."{t["Name"]}"'
            pattern = self.lake_root / t["Name"] / Path(*(f"{k}=*" for k in keys)) / f"*{SUFFIX}"
            if not any(self.lake_root.glob(str(pattern.relative_to(self.lake_root)))):
                nulls = ", ".join(f'CAST(NULL AS {ty}) AS "{c}"' for c, ty in {**columns, **keys}.items())
                views.append(f"CREATE OR REPLACE VIEW {target} AS SELECT {nulls} WHERE false")
                continue
            struct = ", ".join(f"'{c}': '{ty}'" for c, ty in columns.items())
            hive = ", ".join(f"'{c}': '{ty}'" for c, ty in keys.items())
            names = ", ".join(f'"{c}"' for c in {**columns, **keys})
            views.append(
                f"CREATE OR REPLACE VIEW {target} AS SELECT {names} FROM read_json({_sql_list([str(pattern)])}, "
                f"format = 'newline_delimited', compression = 'gzip', columns = {{{struct}}}, hive_partitioning = true, "
                f"hive_types = {{{hive}}})"
            )
        return views

    @property
    def pattern(self) -> Path:
        return self.lake_root / LAKE_PREFIX / "dt=*" / "hour=*" / "*.json.gz"

    def translate(self, name: str) -> str:
        if name not in self._translated:
            self._translated[name] = to_duckdb(render(self.query(name), self.names))
        return self._translated[name]

    def view_sql(self) -> str:
        """The lake as a view: each partition from its columnar copy when `radstream lake compact` left one that is
        still current (same objects, same sizes), else from its gzip NDJSON objects."""
        schema, table, columns = self.table
        target = f'"{schema}"."{table}"'
        cached, uncached, objects = _sources(self.lake_root)
        self.uncompacted = (objects, len(uncached))
        if not cached and not uncached:
            typed_nulls = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in {**columns, **PARTITION_COLUMNS}.items())
            return f"CREATE OR REPLACE VIEW {target} AS SELECT {typed_nulls} WHERE false"
        names = ", ".join(f'"{c}"' for c in {**columns, **PARTITION_COLUMNS})
        parts = []
        if cached:
            parts.append(f"SELECT {names} FROM read_parquet({_sql_list(cached)}, hive_partitioning = false)")
        if uncached:
            # One glob per partition that has no current columnar copy (all of them, in a lake never compacted).
            globs = [str(self.pattern)] if not cached else [str(folder / "*.json.gz") for folder in uncached]
            parts.append(f"SELECT {names} FROM {json_source(globs, columns)}")
        return f"CREATE OR REPLACE VIEW {target} AS " + " UNION ALL ".join(parts)

    def _open(self) -> Any:
        import duckdb

        con = duckdb.connect(":memory:")
        # Athena's session zone is UTC, and so are the lake's dt/hour partitions.
        con.execute("SET TimeZone = 'UTC'")
        # Every named query orders its own output. Keeping the scan's order made DuckDB buffer each object's few rows
        # in order for the shared `recent`: a never-compacted 100,000-object lake took 20 GB and spilled 12 GB to disk
        # (97.8 s for p95_latency_per_stage); without it, 28.2 s and nothing spilled (README Performance).
        con.execute("SET preserve_insertion_order = false")
        # A query too large for memory spills; by default into `.tmp` under the working directory, wherever the user
        # runs `radstream query` (a read-only one fails the query). The system's temp folder instead.
        con.execute("SET temp_directory = ?", [str(Path(tempfile.gettempdir()) / "radstream-duckdb")])
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.table[0]}"')
        return con

    def connect(self) -> Any:
        """A new connection with the lake's view, as the lake is listed now."""
        con = self._open()
        con.execute(self.view_sql())
        for sql in self.model_tables_sql():
            con.execute(sql)
        return con

    def _connection(self) -> Any:
        """The runner's own connection, its view re-created when the lake's listing changed (call it holding the lock)."""
        view = self.view_sql()
        if self._duck is None:
            self._duck, self._view = self._open(), ""
        if view != self._view:
            self._duck.execute(view)
            self._view = view
        for sql in self.model_tables_sql():  # small tables, listed on each query: a row written a moment ago is seen
            self._duck.execute(sql)
        return self._duck

    def close(self) -> None:
        with self._duck_lock:
            if self._duck is not None:
                self._duck.close()
            self._duck, self._view = None, ""

    def run(self, name: str, **params: Any) -> QueryResult:
        import duckdb

        query = self.query(name)
        values = query.bind(params)
        sql = self.translate(name)
        quarantined: list[str] = []
        with self._duck_lock:
            relisted = 0
            while True:
                try:
                    cursor = self._connection().execute(sql, values)
                    columns = [d[0] for d in cursor.description]
                    # DuckDB hands DECIMAL results (round() of an exact sum, say) as Decimal; Athena's runner gives float.
                    decimals = any(str(d[1]).upper().startswith("DECIMAL") for d in cursor.description)
                    rows = cursor.fetchall()
                    if decimals:
                        rows = [tuple(float(v) if isinstance(v, Decimal) else v for v in row) for row in rows]
                    return QueryResult(columns, rows, tuple(quarantined))
                except duckdb.Error as e:
                    bad = named_object(self.lake_root, e)
                    if bad is not None and len(quarantined) < MAX_QUARANTINED_PER_QUERY:
                        # A torn, zero-filled or undecodable object (a crash of the machine, a failing disk): moved
                        # aside, and the query answers from the rest of the lake, saying so.
                        quarantined.append(quarantine_object(self.lake_root, bad, type(e).__name__))
                        self._view = ""
                        continue
                    # `radstream lake compact` removed an object this query had listed (its records are in the merged
                    # object that replaced it): list the lake again.
                    if isinstance(e, duckdb.IOException) and "No such file" in str(e) and relisted < 2:
                        relisted += 1
                        self._view = ""
                        continue
                    raise PermanentError(f"query {name} failed in DuckDB: {e}") from e


# Athena error codes worth retrying: throttling, concurrency limits and its own faults.
class AthenaQueryRunner(_Queries, AthenaExecutor):
    """The named queries through Athena (shared.athena: start, poll with backoff until a deadline, page through)."""

    def __init__(
        self,
        client: Any,
        workgroup: str,
        database: str,
        template: Template | Path | None = None,
        **executor_options: Any,
    ) -> None:
        """executor_options: AthenaExecutor's keyword options (timeout_s, poll_initial_s, ...), which it checks."""
        _Queries.__init__(self, template)
        AthenaExecutor.__init__(self, client, workgroup, database, **executor_options)
        self.names = glue_names(self.template, database)

    def sql(self, name: str) -> str:
        return render(self.query(name), self.names)

    def run(self, name: str, **params: Any) -> QueryResult:
        return self.execute(name, self.sql(name), self.query(name).bind(params))


# --- CLI: radstream query [NAME] [--data-dir DIR] [--param NAME=VALUE] [--json] [--sql] [--limit N] ---

# A terminal table of study_end_to_end at 100,000 studies took rich 2.5 minutes to lay out (0.6 s to query): the table
# shows the first rows and says how many more there are; --json (or --limit 0) gives them all.
DEFAULT_TABLE_ROWS = 100


def add_query_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "query",
        help="run template.yaml's Athena named queries over the local telemetry lake (DuckDB)",
        description="Without NAME, list the named queries. With NAME, run it with DuckDB over DATA_DIR's telemetry lake.",
    )
    p.add_argument("name", nargs="?", help="a named query (omit to list them)")
    add_data_dir(p)
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a query parameter, e.g. days=30 (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (every row)")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_TABLE_ROWS,
        metavar="N",
        help=f"rows the table shows (default {DEFAULT_TABLE_ROWS}; 0: all); says how many more there are",
    )
    p.add_argument("--sql", action="store_true", help="print the query as Athena runs it and as DuckDB runs it, without running it")
    p.set_defaults(func=cmd_query)
    return p


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--param wants NAME=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def cmd_query(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from radstream.cli import require_data_dir
    from shared.settings import Settings

    settings = Settings.from_env()
    lake = Path(args.data_dir) / settings.telemetry_bucket
    if args.name and not args.sql:
        require_data_dir(args.data_dir, "query")  # a typo is an error, not "no rows"
        # What a killed run had buffered but not delivered (its next start would): into the lake before it is queried.
        from shared.wiring import recover_telemetry

        try:
            recover_telemetry(settings.model_copy(update={"data_dir": Path(args.data_dir)}))
        except StorageUnavailable:
            pass  # a read-only or full disk: the query answers from what is delivered; the next run delivers the rest
    runner = DuckDBQueryRunner(lake)
    console = Console()
    if not args.name:
        queries = runner.queries.values()
        if args.json:
            print(json.dumps([{"name": q.name, "description": q.description, "parameters": dict(q.parameters)} for q in queries], indent=2))
            return 0
        table = Table(title="Named queries (template.yaml)")
        for column in ("name", "parameters", "description"):
            table.add_column(column, overflow="fold")
        for q in queries:
            table.add_row(q.name, ", ".join(f"{k}={v}" for k, v in q.parameters), q.description)
        console.print(table)
        return 0
    if args.sql:
        athena = render(runner.query(args.name), glue_names(runner.template, LOCAL_DATABASE))
        print(
            f"-- Athena (there the database is radstream_<EnvironmentName>)\n{athena}\n-- DuckDB (sqlglot {sqlglot.__version__})\n{runner.translate(args.name)}"
        )
        return 0
    result = runner.run(args.name, **_params(args.param))
    if result.quarantined:  # stderr: stdout keeps the table or exactly one JSON document
        print(
            f"radstream query: {len(result.quarantined)} unreadable telemetry object(s) moved to {lake / QUARANTINE_DIR}: "
            f"{', '.join(result.quarantined)}; the answer is from the rest of the lake (`radstream lake check` reads every object)",
            file=sys.stderr,
        )
    objects, partitions = runner.uncompacted
    hint = (
        f"{objects:,} telemetry objects in {partitions} partitions have no compacted copy, and every query reads "
        f"each of them: `radstream lake compact --data-dir {args.data_dir}` merges them (the answers stay the same)"
        if objects >= COMPACT_HINT_OBJECTS
        else ""
    )
    if args.json:
        print(
            json.dumps(
                {"query": args.name, "columns": result.columns, "rows": result.as_dicts(), "quarantined": list(result.quarantined)},
                indent=2,
                default=str,
            )
        )
        if hint:
            print(hint, file=sys.stderr)
        return 0
    if args.limit < 0:
        raise ConfigurationError(f"--limit wants 0 (all rows) or more, got {args.limit}")
    shown = result.rows if args.limit == 0 else result.rows[: args.limit]
    table = Table(title=f"{args.name} ({lake})")
    for column in result.columns:
        table.add_column(column, overflow="fold")
    for row in shown:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    if not result.rows:
        console.print(f"no rows (telemetry lake: {lake})")
    elif len(shown) < len(result.rows):
        console.print(f"the first {len(shown)} of {len(result.rows)} rows: --limit 0 shows them all, --json prints them as JSON")
    if hint:
        console.print(hint, markup=False)
    return 0
