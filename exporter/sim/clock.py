"""Clocks for the simulated fleet.

The fleet never reads time itself: it asks a clock, so tests advance a ``ManualClock`` by minutes
in microseconds and the exporter runs on ``RealClock``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (the origin is arbitrary)."""
        ...

    def on_advance(self, callback: Callable[[], None]) -> None:
        """Registers a callback run whenever time jumps (only manual clocks jump)."""
        ...


class RealClock:
    """Wall time from ``time.monotonic``."""

    def now(self) -> float:
        return time.monotonic()

    def on_advance(self, callback: Callable[[], None]) -> None:  # real time never jumps
        return None


class ManualClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds}))")
        with self._lock:
            self._now += seconds
        for cb in list(self._callbacks):
            cb()

    def on_advance(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
