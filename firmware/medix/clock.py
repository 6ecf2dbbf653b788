"""The clock seam: everything that waits or ages reads time from here, so tests can drive it.

One definition for node and hub; `afra.clock` re-exports it under the firmware's name."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (ages, timeouts)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps shown to people)."""
        ...

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait; return True early if `stop` is set."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)
