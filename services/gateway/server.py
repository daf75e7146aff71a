"""The gateway process: the DIMSE SCP and the STOW-RS endpoint over one Receiver.

In AWS the stored object's S3 event starts the workflow (template.yaml's rule), so nothing more is done
here. Locally, `LocalPipeline` hands each stored key to a LocalRuntime's `run_key` on worker threads (the
C-STORE response never waits for the pipeline). `python -m services.gateway.server` runs it from the
environment's settings (the container's entry point).
"""
from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from services.gateway.deliver import Deliverer
from services.gateway.dimse import DimseServer
from services.gateway.domain import Received, Receiver, pseudonym_key
from services.gateway.secrets import pseudonym_key_value
from services.gateway.stow import StowServer
from services.gateway.tls import server_context
from shared import wiring
from shared.errors import RadStreamError
from shared.settings import Settings
from shared.storage import ObjectStore


class Gateway:
    def __init__(self, settings: Settings, store: ObjectStore | None = None, on_stored: Any = None) -> None:
        self.settings = settings
        self.store = store or wiring.object_store(settings)
        # The key (from Secrets Manager when GATEWAY_PSEUDONYM_SECRET_ARN is set) and the TLS files are read once, before listening.
        self.receiver = Receiver(self.store, settings.images_bucket, pseudonym_key(pseudonym_key_value(settings)), on_stored)
        context = server_context(settings)
        self.dimse = DimseServer(settings, self.receiver, context)
        try:
            self.stow = StowServer(settings, self.receiver, context, healthy=self.dimse.serving)
        except BaseException:
            self.dimse.close()
            raise

    @property
    def ae_title(self) -> str:
        return self.settings.gateway_ae_title

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.dimse.close()
        self.stow.close()


class LocalPipeline:
    """Runs each stored instance through a LocalRuntime, then delivers its SR (when a destination is set).

    `futures` keeps every run (key -> outcome future); `deliveries` what each study's SR was sent to, or the
    error that stopped it (the result and the SR stay in the results bucket either way).
    """

    def __init__(self, runtime: Any, workers: int = 2, deliverer: Deliverer | None = None) -> None:
        self.runtime = runtime
        self.deliverer = deliverer if deliverer is not None and deliverer.configured else None
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-run")
        self.futures: dict[str, Future] = {}
        self.deliveries: dict[str, list[str] | Exception] = {}
        self._lock = threading.Lock()

    def _run(self, received: Received) -> Any:
        outcome = self.runtime.run_key(received.key)
        if self.deliverer is not None and outcome.status == "succeeded":
            try:
                delivered: list[str] | Exception = self.deliverer.deliver(received.study_id)
            except RadStreamError as e:
                logging.getLogger("radstream.gateway").warning("SR not delivered study_id=%s: %s (%s)", received.study_id, e.error_name, e.message)
                delivered = e
            with self._lock:
                self.deliveries[received.study_id] = delivered
        return outcome

    def __call__(self, received: Received) -> None:
        future = self.pool.submit(self._run, received)
        with self._lock:
            self.futures[received.key] = future

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def main() -> int:  # pragma: no cover - the container's entry point; the tests start Gateway directly
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Gateway(settings) as gateway:
        logging.getLogger("radstream.gateway").info(
            "gateway ready ae_title=%s dimse_port=%d dicom_tls_port=%s stow=%s", gateway.ae_title, gateway.dimse.port,
            gateway.dimse.tls_port, gateway.stow.url)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
