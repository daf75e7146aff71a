"""Lambda entry point of the telemetry service (radstream-send-telemetry)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.telemetry.domain import TelemetryRequest, TelemetrySent, send_telemetry
from shared.observability import stage_handler
from shared.settings import Settings
from shared.telemetry import TelemetrySink
from shared.wiring import Once, telemetry_sink


@dataclass(frozen=True)
class Dependencies:
    sink: TelemetrySink

    @classmethod
    def from_env(cls) -> "Dependencies":
        return cls(telemetry_sink(Settings.from_env()))


dependencies = Once(Dependencies.from_env)


def run(event: dict[str, Any], deps: Dependencies | None = None) -> TelemetrySent:
    deps = deps or dependencies.get()
    return send_telemetry(TelemetryRequest.model_validate(event), deps.sink)


lambda_handler = stage_handler("telemetry")(run)
