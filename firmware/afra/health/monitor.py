"""HealthMonitor: the thread that runs the checks and keeps the status file.

Each probe (`afra.health.checks`) runs when its interval is due on the injected clock; after
every pass the monitor ends expired conditions and rewrites `<data_dir>/status.json` when
something visible changed or the file is getting old (`afra.health.status` reads it). When
every check has run once the box is no longer "booting". It owns the thread, the schedule
and the writing of the file, nothing of the model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from afra.clock import Clock
from afra.health.checks import Probe
from afra.health.state import Health
from afra.health.status import STATUS_REFRESH_S
from medix.durable import write_atomic

LOG = logging.getLogger("afra.health")


class StatusPart(Protocol):
    """Another part of the box that shows up in the status file (the panel, mDNS)."""

    def snapshot(self) -> dict[str, Any]: ...

    def signature(self) -> str:
        """Changes when the part's snapshot changes in a way `afra status` should show."""
        ...


class HealthMonitor:
    """Runs each probe when due (injected clock); keeps the status file for `afra status`."""

    def __init__(
        self,
        health: Health,
        probes: Sequence[Probe],
        *,
        clock: Clock,
        status_path: Path | None = None,
        parts: Mapping[str, StatusPart] | None = None,
        tick: float = 1.0,
    ) -> None:
        self.health = health
        self.probes = list(probes)
        self.clock = clock
        self.status_path = status_path
        self.parts = dict(parts or {})
        self.tick = tick
        self._due: dict[str, float] = {}
        self._pass_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: tuple[str, float] | None = None

    def run_once(self) -> int:
        """Run the probes that are due, then refresh the status file; how many ran."""
        with self._pass_lock:  # one pass at a time: the thread's, or a caller's
            now = self.clock.monotonic()
            ran = 0
            for probe in self.probes:
                if now < self._due.get(probe.name, now):
                    continue
                self._due[probe.name] = now + probe.interval
                try:
                    probe.check(self.health)
                except Exception:
                    LOG.exception("health check %s failed", probe.name)
                ran += 1
            self.health.refresh()
            self.write_status()
            return ran

    def write_status(self, force: bool = False) -> bool:
        """Rewrite the status file when something visible changed or it is getting old."""
        if self.status_path is None:
            return False
        health = self.health.snapshot()
        signature = json.dumps(
            [health, {name: part.signature() for name, part in self.parts.items()}],
            sort_keys=True,
        )
        now = self.clock.monotonic()
        if not force and self._written is not None:
            last, at = self._written
            if last == signature and now - at < STATUS_REFRESH_S:
                return False
        doc: dict[str, Any] = {
            "health": health,
            **{name: part.snapshot() for name, part in self.parts.items()},
            "updated_at": self.clock.time(),
            "pid": os.getpid(),
        }
        try:
            # Rewritten every few seconds and worthless after a reboot: atomic, not fsynced.
            write_atomic(
                self.status_path,
                json.dumps(doc, indent=2).encode(),
                sync=False,
                single_writer=True,  # this thread alone: one temp name, never a pile of them
            )
        except OSError as exc:
            LOG.debug("status file %s not written: %s", self.status_path, exc)
            return False
        self._written = (signature, now)
        return True

    @property
    def alive(self) -> bool:
        """Whether its thread runs (systemd's watchdog is fed only while it does)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self.status_path is not None:
            self.status_path.unlink(missing_ok=True)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.run_once()
                if first:  # every check has run once: the box knows how it is
                    self.health.set("booting", False)
                    self.write_status(force=True)
                    first = False
            except Exception:
                LOG.exception("health pass failed")
            if self.clock.sleep(self.tick, self._stop):
                return
