"""The box's health as it is now: conditions raised and cleared by sources, one state out.

Parts of the box raise and clear conditions (`afra.health.model.CONDITIONS`); `Health` keeps
who holds which (a condition is active while any source holds it), ends timed ones
(`for_seconds`: the setup window, locate), resolves the state (the highest-ranked among the
active conditions, "healthy" when none is) and tells its listeners about every change. It
owns no checks and no files: `afra.health.checks` feeds it, `afra.health.monitor` writes it out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from afra.clock import Clock
from afra.health.model import CONDITIONS, HEALTHY, STATES, Reason, UnknownCondition

LOG = logging.getLogger("afra.health")


@dataclass
class _Held:
    detail: str
    since_wall: float
    until: float | None  # monotonic deadline, or None
    seq: int  # raised in this order (ties of rank and time keep it)


Listener = Callable[["Health"], None]


class Health:
    """The box's health: conditions in, one state and its reasons out. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}
        self._listeners: list[Listener] = []
        self._state = HEALTHY
        self._changed_at = clock.time()
        self._seq = 0

    # -- events in --------------------------------------------------------------------------

    def set(
        self,
        condition: str,
        active: bool,
        detail: str = "",
        *,
        source: str = "",
        for_seconds: float | None = None,
    ) -> None:
        """Raise or clear a condition (for one source); unknown names raise UnknownCondition."""
        if condition not in CONDITIONS:
            raise UnknownCondition(f"unknown health condition {condition!r}")
        key = (condition, source)
        now = self.clock.monotonic()
        until = None if for_seconds is None else now + for_seconds
        with self._lock:
            self._expire(now)
            held = self._held.get(key)
            if active:
                text = detail or CONDITIONS[condition].text
                if held is not None and held.detail == text and held.until is until is None:
                    return
                if held is None:
                    self._seq += 1
                    held = _Held(text, self.clock.time(), until, self._seq)
                self._held[key] = _Held(text, held.since_wall, until, held.seq)
            else:
                if held is None:
                    return
                del self._held[key]
            self._resolve()
        self._notify(True)

    def refresh(self) -> None:
        """End conditions whose time ran out (also done on every read)."""
        with self._lock:
            fire = self._expire(self.clock.monotonic())
            if fire:
                self._resolve()
        self._notify(fire)

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback(health)` after every change of state or reasons; returns unsubscribe."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return unsubscribe

    # -- state out --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        self.refresh()
        with self._lock:
            return self._state

    @property
    def reasons(self) -> list[Reason]:
        """Active conditions, worst first (then oldest first)."""
        self.refresh()
        with self._lock:
            return self._reasons()

    def is_active(self, condition: str) -> bool:
        self.refresh()
        with self._lock:
            return any(c == condition for c, _ in self._held)

    def remaining(self, condition: str) -> float:
        """Seconds until a timed condition ends (0 when not active or not timed)."""
        now = self.clock.monotonic()
        with self._lock:
            ends = [h.until for (c, _), h in self._held.items() if c == condition and h.until]
        return max(0.0, max(ends) - now) if ends else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The state, its summary and the reasons, as JSON-ready data."""
        self.refresh()
        with self._lock:
            state = self._state
            changed_at = self._changed_at
            reasons = self._reasons()
        return {
            "state": state,
            "summary": STATES[state].summary,
            "since": changed_at,
            "reasons": [
                {
                    "condition": r.condition,
                    "state": r.state,
                    "detail": r.detail,
                    "source": r.source,
                    "since": r.since,
                }
                for r in reasons
            ],
        }

    # -- inside the lock ----------------------------------------------------------------------

    def _expire(self, now: float) -> bool:
        gone = [k for k, h in self._held.items() if h.until is not None and h.until <= now]
        for key in gone:
            del self._held[key]
        return bool(gone)

    def _reasons(self) -> list[Reason]:
        held = sorted(
            self._held.items(),
            key=lambda kv: (-STATES[CONDITIONS[kv[0][0]].state].rank, kv[1].since_wall, kv[1].seq),
        )
        return [Reason(c, CONDITIONS[c].state, h.detail, s, h.since_wall) for (c, s), h in held]

    def _resolve(self) -> None:
        """Recompute the state from the active conditions."""
        worst = max(
            (STATES[CONDITIONS[c].state] for c, _ in self._held),
            key=lambda s: s.rank,
            default=STATES[HEALTHY],
        )
        if worst.name != self._state:
            LOG.log(
                logging.WARNING if worst.rank >= STATES["failed"].rank else logging.INFO,
                "health: %s -> %s (%s)",
                self._state,
                worst.name,
                "; ".join(r.detail for r in self._reasons()) or worst.summary,
            )
            self._state = worst.name
            self._changed_at = self.clock.time()

    def _notify(self, fire: bool) -> None:
        if not fire:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self)
            except Exception:
                LOG.exception("health listener failed")
