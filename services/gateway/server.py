"""The gateway process: the DIMSE SCP and the DICOMweb endpoint over one Receiver (storing) and one Archive (serving
what RadStream made).

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

from services.gateway.archive import Archive
from services.gateway.dimse import DimseServer
from services.gateway.domain import Received, Receiver, pseudonym_key
from services.gateway.secrets import pseudonym_key_value
from services.gateway.stow import StowServer
from services.gateway.tls import server_context
from shared import wiring
from shared.scheduling import Dispatcher, StudyQueue
from shared.settings import Settings
from shared.storage import ObjectStore


class Gateway:
    def __init__(self, settings: Settings, store: ObjectStore | None = None, on_stored: Any = None) -> None:
        self.settings = settings
        self.store = store or wiring.object_store(settings)
        # The key (from Secrets Manager when GATEWAY_PSEUDONYM_SECRET_ARN is set) and the TLS files are read once, before listening.
        self.receiver = Receiver(
            self.store, settings.images_bucket, pseudonym_key(pseudonym_key_value(settings)), on_stored, max_bytes=settings.max_image_bytes
        )
        # What viewers query and retrieve (QIDO-RS, WADO-RS, C-FIND, C-GET): the SR and overlay in the results bucket.
        self.archive = Archive(self.store, settings.results_bucket)
        context = server_context(settings)
        self.dimse = DimseServer(settings, self.receiver, context, archive=self.archive)
        try:
            self.stow = StowServer(settings, self.receiver, context, healthy=self.dimse.serving, archive=self.archive)
        except BaseException:
            self.dimse.close()
            raise

    @property
    def ae_title(self) -> str:
        return self.settings.gateway_ae_title

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.dimse.close()
        self.stow.close()


class LocalPipeline:
    """Runs each stored instance through a LocalRuntime on worker threads; `futures` keeps every run (key -> outcome future).

    The workflow's DeliverResults sends the SR and the overlay to the runtime's configured destinations
    (EXPORT_DICOM_PEER, EXPORT_STOW_URL, EXPORT_FHIR_URL); each outcome's `delivery` says where they went, or
    names the dead letter.
    """

    def __init__(self, runtime: Any, workers: int = 2) -> None:
        self.runtime = runtime
        # Stat, then urgent, then routine, with aging (shared/scheduling.py), in place of first come, first served.
        self.queue: StudyQueue[tuple[Received, Future]] = StudyQueue()
        self.dispatcher = Dispatcher(self.queue, self._run, workers, name="gateway-run")
        # What an earlier run left unfinished (`resume`, with its own workers) runs beside the queue.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-backlog")
        self.futures: dict[str, Future] = {}
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> None:
        future: Future = Future()
        with self._lock:
            self.futures[received.key] = future
        self.queue.put((received, future), received.priority)

    def _run(self, item: tuple[Received, Future]) -> None:
        received, future = item
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self.runtime.run_key(received.key))
        except BaseException as e:  # run_key records a study's failure itself; this is the runtime failing
            future.set_exception(e)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.dispatcher.close()


def configure_logging() -> None:
    """One handler per log line. The gateway's loggers ("radstream.gateway") are children of "radstream", which carries
    the project's structured handler (shared.observability, JSON to stdout); a root handler (for other libraries'
    warnings, pynetdicom's) received every gateway line a second time through propagation. Now it receives only
    what is not the project's own."""
    from shared import observability  # noqa: F401 - installs the "radstream" handler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("radstream").propagate = False


def main() -> int:  # pragma: no cover - the container's entry point; the tests start Gateway directly
    configure_logging()
    settings = Settings.from_env()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Gateway(settings) as gateway:
        logging.getLogger("radstream.gateway").info(
            "gateway ready",
            extra={
                "ae_title": gateway.ae_title,
                "dimse_port": gateway.dimse.port,
                "dicom_tls_port": gateway.dimse.tls_port,
                "stow": gateway.stow.url,
            },
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
