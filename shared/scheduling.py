"""The study queue: stat, then urgent, then routine, with aging so that routine work is never starved.

Each study gets a virtual deadline when it arrives: its arrival time minus its priority's head start (stat 30 min,
urgent 10 min, routine none); a free worker takes the study with the earliest deadline (arrival order breaks ties).
So a stat study goes ahead of every routine study that arrived less than 30 minutes before it, and of none that
waited longer. The bound this gives a routine study, stated: it is overtaken only by the studies already queued
when it arrived and by stat (urgent) studies that arrive within 30 (10) minutes after it; once it has waited that
long, nothing that arrives later goes ahead of it. `radstream run`, `resume`, the gateway's queue and the
benchmark take studies from here.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.priority import DEFAULT, PRIORITIES

T = TypeVar("T")

# Seconds of head start by priority: how long a more urgent study may keep overtaking a routine one.
HEAD_START_S: dict[str, float] = {"stat": 1800.0, "urgent": 600.0, "routine": 0.0}


@dataclass(order=True)
class _Entry(Generic[T]):
    deadline: float
    seq: int
    item: T = field(compare=False)
    priority: str = field(compare=False)
    arrived: float = field(compare=False)


class StudyQueue(Generic[T]):
    """A thread-safe earliest-virtual-deadline queue (module docstring). `clock`: monotonic seconds (tests pass a fake)."""

    def __init__(self, head_start_s: dict[str, float] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.head_start_s = dict(HEAD_START_S if head_start_s is None else head_start_s)
        unknown = set(self.head_start_s) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"head start for unknown priorities: {sorted(unknown)}")
        self.clock = clock
        self._heap: list[_Entry[T]] = []
        self._seq = itertools.count()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, item: T, priority: str = DEFAULT, arrived: float | None = None) -> None:
        priority = priority if priority in PRIORITIES else DEFAULT
        at = self.clock() if arrived is None else arrived
        entry = _Entry(at - self.head_start_s.get(priority, 0.0), next(self._seq), item, priority, at)
        with self._ready:
            heapq.heappush(self._heap, entry)
            self._ready.notify()

    def pop(self) -> T | None:
        """The next study now, or None when none is queued (a batch run's end)."""
        with self._ready:
            return heapq.heappop(self._heap).item if self._heap else None

    def get(self, timeout: float | None = None) -> T | None:
        """The next study, waiting for one until `timeout` or until the queue is closed and empty (then None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._heap:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)
            return heapq.heappop(self._heap).item

    def close(self) -> None:
        """No more studies will be put; `get` returns None once the queue is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return len(self._heap)


class Dispatcher(Generic[T]):
    """`workers` threads that take studies from a StudyQueue, most urgent first, until it is closed and empty: the
    gateway's queue and the triage benchmark. `run` must not raise (the runtime's `run_key` records every failure)."""

    def __init__(self, queue: StudyQueue[T], run: Callable[[T], object], workers: int, name: str = "study") -> None:
        self.queue = queue
        self.run = run
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            self.run(item)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking new studies once the queue is empty; wait for the workers (the studies already queued run first)."""
        self.queue.close()
        for thread in self.threads:
            thread.join(timeout)
