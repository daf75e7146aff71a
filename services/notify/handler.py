"""Lambda entry point of the notify service: NotifyCriticalFindings (radstream-notify) and RecordNotifyDeadLetter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.notify.domain import notify
from shared.events import EventPublisher
from shared.messages import NotifiedResult, NotifyRequest
from shared.observability import StageHandler
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.wiring import close_all, event_publisher, object_store


@dataclass(frozen=True)
class NotifyDependencies:
    settings: Settings
    store: ObjectStore
    events: EventPublisher

    @classmethod
    def from_settings(cls, settings: Settings) -> NotifyDependencies:
        return cls(settings, object_store(settings), event_publisher(settings))

    def close(self) -> None:
        close_all(self.store, self.events)


def run(event: dict[str, Any], deps: NotifyDependencies) -> NotifiedResult:
    return notify(NotifyRequest.model_validate(event), deps.store, deps.events, deps.settings)


lambda_handler = StageHandler("notify", run, NotifyDependencies.from_settings)
