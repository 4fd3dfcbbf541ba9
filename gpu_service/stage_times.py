"""Where a worker's time goes: seconds and counts per stage, summed across its threads.

The worker adds to it as it goes (each AWS call by name, PNG encoding, the pipeline calls, the
engine's idle waits); ``scripts/measure_worker_path.py`` reads it to say where the time of a run
went. Adding is cheap (one lock, two dict updates) and never raises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class StageTotal:
    seconds: float
    count: int


class StageTimes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, stage: str, seconds: float, count: int = 1) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
            self._counts[stage] = self._counts.get(stage, 0) + count

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to ``stage`` (whether it raises or not)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def totals(self) -> dict[str, StageTotal]:
        with self._lock:
            return {
                stage: StageTotal(seconds, self._counts[stage])
                for stage, seconds in sorted(self._seconds.items())
            }

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._counts.clear()
