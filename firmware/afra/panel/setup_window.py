"""The setup window: proof that someone stands at the box.

Holding the button for about 3 s opens it for a limited time (`panel.setup_window`). The
setup wizard asks `is_open()` before it accepts changes that only someone with physical
access may make; the health state shows `setup_open` (its own light pattern) meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from afra.clock import Clock
from afra.health import Health

LOG = logging.getLogger("afra.panel")


class SetupWindow:
    def __init__(self, health: Health, *, clock: Clock, duration: float) -> None:
        self.health = health
        self.clock = clock
        self.duration = duration
        self._lock = threading.Lock()
        self._until: float | None = None
        self._opened_at = 0.0  # wall clock, for people

    def open(self, seconds: float | None = None, *, by: str = "button") -> None:
        """Open (or extend) the window for `seconds` (default: the configured duration)."""
        seconds = self.duration if seconds is None else seconds
        if seconds <= 0:
            raise ValueError("a setup window lasts more than 0 seconds")
        with self._lock:
            self._until = self.clock.monotonic() + seconds
            self._opened_at = self.clock.time()
        self.health.set(
            "setup_open",
            True,
            f"setup window opened by the {by} for {seconds / 60:.0f} min",
            source="window",
            for_seconds=seconds,
        )
        LOG.info("setup window open for %.0f s (%s)", seconds, by)

    def close(self) -> None:
        with self._lock:
            was_open = self._until is not None and self.clock.monotonic() < self._until
            self._until = None
        self.health.set("setup_open", False, source="window")
        if was_open:
            LOG.info("setup window closed")

    def remaining(self) -> float:
        """Seconds the window stays open; 0 when closed."""
        with self._lock:
            until = self._until
        return 0.0 if until is None else max(0.0, until - self.clock.monotonic())

    def is_open(self) -> bool:
        return self.remaining() > 0

    def snapshot(self) -> dict[str, Any]:
        remaining = self.remaining()
        return {
            "open": remaining > 0,
            "remaining_s": round(remaining, 1),
            "opened_at": self._opened_at if remaining > 0 else None,
        }
