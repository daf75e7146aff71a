"""Lambda entry point of the telemetry service (radstream-send-telemetry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.telemetry.domain import send_telemetry
from shared.messages import TelemetryRequest, TelemetrySent
from shared.observability import StageHandler
from shared.settings import Settings
from shared.telemetry import TelemetrySink
from shared.wiring import close_all, telemetry_sink


@dataclass(frozen=True)
class Dependencies:
    sink: TelemetrySink

    @classmethod
    def from_settings(cls, settings: Settings) -> Dependencies:
        return cls(telemetry_sink(settings))

    def close(self) -> None:
        close_all(self.sink)


def run(event: dict[str, Any], deps: Dependencies) -> TelemetrySent:
    return send_telemetry(TelemetryRequest.model_validate(event), deps.sink)


lambda_handler = StageHandler("telemetry", run, Dependencies.from_settings)
