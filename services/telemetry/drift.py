"""Scheduled drift check (radstream-drift-check, an EventBridge schedule in template.yaml): runs the model_drift named
query in Athena and writes each feature's population stability index as the EMF metric `ModelDriftPSI`, which
ModelDriftAlarm watches (Maximum over the run's features against the level the query calls shifted).

Input: the schedule's event, optionally `{"days": 1, "baseline_days": 28}` (the query's parameters). Output: the
features checked and the shifted ones. `radstream models drift --alarm` evaluates the same query and the same alarm
locally with DuckDB.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from shared.athena import AthenaExecutor
from shared.errors import ConfigurationError
from shared.metrics import EmfWriter, StdoutEmf, drift_metrics
from shared.observability import logger
from shared.wiring import boto3_client

DRIFT_QUERY = "model_drift"


@dataclass(frozen=True)
class Dependencies:
    athena: AthenaExecutor
    query_id: str  # the model_drift AWS::Athena::NamedQuery's id: its SQL is read from Athena, never copied here
    emf: EmfWriter

    @classmethod
    def from_environment(cls) -> Dependencies:
        missing = [name for name in ("DRIFT_QUERY_ID", "ATHENA_WORKGROUP", "GLUE_DATABASE") if not os.environ.get(name)]
        if missing:
            raise ConfigurationError(f"the drift check needs {', '.join(missing)} (template.yaml sets them)")
        athena = AthenaExecutor(boto3_client("athena"), os.environ["ATHENA_WORKGROUP"], os.environ["GLUE_DATABASE"], timeout_s=240.0)
        return cls(athena, os.environ["DRIFT_QUERY_ID"], StdoutEmf())


def check_drift(deps: Dependencies, days: int = 1, baseline_days: int = 28) -> dict[str, Any]:
    """Run model_drift over the last `days` against the `baseline_days` before; publish each feature's PSI."""
    sql = deps.athena.named_query(deps.query_id)
    rows = deps.athena.execute(DRIFT_QUERY, sql, [days, baseline_days]).as_dicts()
    deps.emf.write(drift_metrics(rows))
    shifted = sorted(f"{r['model_name']}@{r['model_version']} {r['feature']}" for r in rows if r["level"] == "shifted")
    logger.info("drift checked", features=len(rows), shifted=len(shifted))
    return {"features": len(rows), "shifted": shifted}


_deps: Dependencies | None = None
_lock = threading.Lock()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _deps
    with _lock:
        if _deps is None:
            _deps = Dependencies.from_environment()
    return check_drift(_deps, int(event.get("days", 1)), int(event.get("baseline_days", 28)))
