"""Lambda entry point of the notify service: NotifyCriticalFindings (radstream-notify) and RecordNotifyDeadLetter."""

from __future__ import annotations

from typing import Any

from services.notify.domain import notify
from shared.messages import NotifiedResult, NotifyRequest
from shared.observability import StageHandler
from shared.wiring import EventDependencies


def run(event: dict[str, Any], deps: EventDependencies) -> NotifiedResult:
    return notify(NotifyRequest.model_validate(event), deps.store, deps.events, deps.settings)


lambda_handler = StageHandler("notify", run, EventDependencies.from_settings)
