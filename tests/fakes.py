"""Fakes for what CI cannot have for real: here, the clock."""

from __future__ import annotations

import threading


class FakeClock:
    """A clock the test moves by hand. sleep() does not advance time; it only yields."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is None:
            return False
        return stop.wait(0.01)
