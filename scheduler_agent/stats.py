"""In-process job statistics the metrics collector reads (durations since this process started).

A histogram that restarts with the process is what Prometheus expects of one (rate() handles
the reset); the job counters, which must survive restarts, live in SQLite instead.
"""

from __future__ import annotations

import bisect
import threading

# Seconds: jobs run from seconds to days.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0)


class JobStats:
    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out: list[tuple[str, float]] = []
        running = 0
        for le, c in zip(self.buckets, counts, strict=False):
            running += c
            out.append((repr(float(le)), running))
        out.append(("+Inf", running + counts[-1]))
        return out, total
