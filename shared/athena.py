"""Athena from Python: run a query (SQL and execution parameters) in a workgroup, poll it with backoff until a deadline,
page through its results, typed by Athena's column types. The runtime's named-query runner (radstream.analytics) and the
scheduled drift check (services/telemetry/drift.py) both run their queries through `AthenaExecutor`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from shared.aws_errors import translated
from shared.errors import PermanentError, RadStreamError, StorageUnavailable


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    # Lake objects this query found unreadable and moved aside (<lake>/.quarantine/…): it answered from the rest.
    quarantined: tuple[str, ...] = ()

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


_NUMERIC = {
    "tinyint": int,
    "smallint": int,
    "integer": int,
    "int": int,
    "bigint": int,
    "double": float,
    "float": float,
    "real": float,
    "decimal": float,
}


@dataclass(eq=False)
class AthenaExecutor:
    """Start a query, poll with backoff until a deadline, page through the results."""

    client: Any
    workgroup: str
    database: str
    _: KW_ONLY
    timeout_s: float = 300.0
    poll_initial_s: float = 0.25
    poll_max_s: float = 5.0
    page_size: int = 1000
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def execute(self, name: str, sql: str, values: list[Any] | None = None) -> QueryResult:
        """Run `sql` (named `name` in errors) with its execution parameters; the whole result."""
        request: dict[str, Any] = {
            "QueryString": sql,
            "QueryExecutionContext": {"Database": self.database},
            "WorkGroup": self.workgroup,
        }
        if values:
            request["ExecutionParameters"] = [str(v) for v in values]
        execution_id = self._call("start_query_execution", **request)["QueryExecutionId"]
        self._wait(name, execution_id)
        return self._results(execution_id)

    def named_query(self, query_id: str) -> str:
        """The SQL of a named query (AWS::Athena::NamedQuery in template.yaml) by its id."""
        return str(self._call("get_named_query", NamedQueryId=query_id)["NamedQuery"]["QueryString"])

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        with translated(f"athena {operation}", "--workgroup / --database"):
            return getattr(self.client, operation)(**kwargs)

    def _wait(self, name: str, execution_id: str) -> None:
        deadline = self.clock() + self.timeout_s
        delay = self.poll_initial_s
        while True:
            execution = self._call("get_query_execution", QueryExecutionId=execution_id)["QueryExecution"]
            status = execution.get("Status", {})
            state = status.get("State")
            if state == "SUCCEEDED":
                return
            if state in ("FAILED", "CANCELLED"):
                reason = status.get("StateChangeReason") or status.get("AthenaError", {}).get("ErrorMessage") or "no reason given"
                message = f"athena query {name} ({execution_id}) {state}: {reason}"
                if state == "FAILED" and status.get("AthenaError", {}).get("Retryable"):
                    raise StorageUnavailable(message)
                raise PermanentError(message)
            remaining = deadline - self.clock()
            if remaining <= 0:
                try:
                    self._call("stop_query_execution", QueryExecutionId=execution_id)
                except RadStreamError:
                    pass  # the deadline is what the caller hears about; the workgroup's cutoff bounds a runaway query
                raise StorageUnavailable(
                    f"athena query {name} ({execution_id}) still {state} after {self.timeout_s:g} s; asked Athena to stop it"
                )
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max_s)

    def _results(self, execution_id: str) -> QueryResult:
        columns: list[str] = []
        types: list[str] = []
        rows: list[tuple[Any, ...]] = []
        token: str | None = None
        first = True
        while True:
            request: dict[str, Any] = {"QueryExecutionId": execution_id, "MaxResults": self.page_size}
            if token:
                request["NextToken"] = token
            page = self._call("get_query_results", **request)
            result_set = page.get("ResultSet", {})
            if first:
                info = result_set.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                columns = [c["Name"] for c in info]
                types = [c.get("Type", "varchar").lower() for c in info]
            page_rows = [[d.get("VarCharValue") for d in r.get("Data", [])] for r in result_set.get("Rows", [])]
            if first and page_rows and page_rows[0] == columns:
                page_rows = page_rows[1:]  # a SELECT's first row holds the column labels
            rows.extend(tuple(_convert(v, t) for v, t in zip(row, types)) for row in page_rows)
            first = False
            token = page.get("NextToken")
            if not token:
                return QueryResult(columns, rows)


def _convert(value: str | None, athena_type: str) -> Any:
    if value is None:
        return None
    if athena_type == "boolean":
        return value.lower() == "true"
    convert = _NUMERIC.get(athena_type.split("(")[0])
    if convert is None:
        return value
    try:
        return convert(value)
    except ValueError:
        return float(value) if value.lower() in ("nan", "infinity", "-infinity") else value
