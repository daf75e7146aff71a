"""Threading helpers: a daemon worker pool and caller-runs fan-out with cancellation."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """A sibling branch failed (or the execution stopped); this branch stops at its next transition."""


class Scope:
    """Cancellation flag for one Parallel/Map fan-out, chained to the enclosing one."""

    __slots__ = ("cancelled", "parent")

    def __init__(self, parent: Scope | None = None) -> None:
        self.cancelled = False
        self.parent = parent

    def check(self) -> None:
        scope: Scope | None = self
        while scope is not None:
            if scope.cancelled:
                raise Cancelled()
            scope = scope.parent


class DaemonPool:
    """Daemon worker threads, grown on demand and retired after idling.

    Daemon threads because a timed-out task cannot be killed and must not block interpreter exit.
    """

    _IDLE_SECONDS = 60.0

    def __init__(self, max_fanout: int) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # idle workers minus queued items not yet taken
        self._fanout = 0
        self._max_fanout = max_fanout

    def spawn(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a worker thread now (a new one if none is idle)."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, daemon=True, name="asl-worker").start()
        self._queue.put(fn)

    def try_spawn_fanout(self, fn: Callable[[], None]) -> bool:
        """Run a fan-out job on a worker unless ``max_fanout`` of them already run; the caller runs it otherwise."""
        with self._lock:
            if self._fanout >= self._max_fanout:
                return False
            self._fanout += 1

        def job() -> None:
            try:
                fn()
            finally:
                with self._lock:
                    self._fanout -= 1

        self.spawn(job)
        return True

    def _work(self) -> None:
        while True:
            try:
                fn = self._queue.get(timeout=self._IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # a surplus idle worker: safe to retire
                        self._idle -= 1
                        return
                continue
            fn()
            with self._lock:
                self._idle += 1


class _Job:
    __slots__ = ("fn", "claim", "done", "result", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.claim = threading.Lock()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def fan_out(pool: DaemonPool, fns: list[Callable[[], Any]], scope: Scope) -> list[Any]:
    """Run ``fns`` concurrently and return their results in order; the first failure cancels ``scope`` and is raised.

    Jobs no worker has started yet are run by the calling thread, so nested fan-outs cannot deadlock.
    """
    if len(fns) == 1:
        return [fns[0]()]
    jobs = [_Job(fn) for fn in fns]
    failure: list[BaseException] = []
    failure_lock = threading.Lock()

    def run(job: _Job) -> None:
        if not job.claim.acquire(blocking=False):
            return
        try:
            job.result = job.fn()
        except BaseException as exc:
            job.error = exc
            with failure_lock:
                if not isinstance(exc, Cancelled) and not failure:
                    failure.append(exc)
            scope.cancelled = True
        finally:
            job.done.set()

    for job in jobs[1:]:
        if not pool.try_spawn_fanout(functools.partial(run, job)):
            break
    for job in jobs:
        run(job)
    for job in jobs:
        job.done.wait()
    if failure:
        raise failure[0]
    for job in jobs:
        if job.error is not None:
            raise job.error
    return [job.result for job in jobs]
