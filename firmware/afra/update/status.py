"""An update's life as data: its phases, the moves between them, and the record on disk.

    idle -> downloading -> checking -> installing -> rebooting -> trial -> kept
                 |             |            |            |           \\-> rolled_back
                 v             v            v            \\-> rolled_back (the new system
              failed        refused      failed               never came up)

The record is `<data_dir>/update/status.json`, written durably at every move, so the
outcome outlives the reboot it causes: the dashboard and the hub heartbeat read it, and the
self-test of the next boot continues it. A move the table does not allow raises: nothing
silently jumps from "downloading" to "kept".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from afra.audit import Actor, Audit
from afra.clock import Clock
from afra.errors import AfraError
from medix.durable import write_public

LOG = logging.getLogger("afra.update")


@dataclass(frozen=True)
class Phase:
    name: str
    busy: bool  # an update is under way: do not unplug, do not start another
    summary: str


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase("idle", False, "no update has been installed"),
        Phase("downloading", True, "fetching the update from the hub"),
        Phase("checking", True, "checking the update's signature"),
        Phase("installing", True, "writing the update into the other system slot"),
        Phase("rebooting", True, "restarting into the updated system"),
        Phase("trial", True, "the updated system is testing itself"),
        Phase("kept", False, "the update passed its self-test and is kept"),
        Phase("rolled_back", False, "the update failed its self-test: the previous system runs"),
        Phase("failed", False, "the update could not be installed"),
        Phase("refused", False, "the update was refused"),
    )
}

# A new attempt may start from any phase that is not busy.
_START = ("downloading", "checking")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "idle": _START,
    "downloading": ("checking", "failed"),
    "checking": ("installing", "refused", "failed"),
    "installing": ("rebooting", "failed"),
    "rebooting": ("trial", "rolled_back", "failed"),
    "trial": ("kept", "rolled_back"),
    "kept": _START,
    "rolled_back": _START,
    "failed": _START,
    "refused": _START,
}

assert set(TRANSITIONS) == set(PHASES)
assert all(t in PHASES for targets in TRANSITIONS.values() for t in targets)


class BadMove(AfraError, RuntimeError):
    """An update phase change the table does not allow."""


@dataclass(frozen=True)
class UpdateStatus:
    state: str = "idle"
    version: str = ""  # what is being (or was) installed
    from_version: str = ""  # what ran before
    source: str = ""  # "hub" or "dashboard"
    slot: str = ""  # the slot written ("A" or "B")
    sha256: str = ""  # the hub's bundle (hub offers), "" for an upload
    progress: int = 0  # percent within the phase
    message: str = ""
    at: float = 0.0  # wall-clock time of the last move
    boot_id: str = ""  # the kernel's boot id when "rebooting" was recorded
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def busy(self) -> bool:
        return PHASES[self.state].busy

    def failed_before(self, sha256: str) -> bool:
        """Whether this bundle was refused or rolled back here, now or in the history."""
        ended = ("refused", "rolled_back")
        if self.sha256 == sha256 and self.state in ended:
            return True
        return any(h.get("sha256") == sha256 and h.get("state") in ended for h in self.history)

    @property
    def summary(self) -> str:
        return PHASES[self.state].summary

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["history"] = list(self.history)
        doc["busy"] = self.busy
        doc["summary"] = self.summary
        return doc


HISTORY = 10  # finished attempts kept in the record


class UpdateRecord:
    """The update status file: read at start, rewritten durably at every move."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        # Told of every move, after the file is written (the audit trail listens).
        self.observers: list[Callable[[UpdateStatus], None]] = []
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._status = self._load()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _load(self) -> UpdateStatus:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return UpdateStatus()
        except (OSError, ValueError) as exc:
            LOG.error("update record %s is unreadable (%s); starting afresh", self.path, exc)
            return UpdateStatus()
        known = {f for f in UpdateStatus.__dataclass_fields__}
        try:
            values = {k: v for k, v in doc.items() if k in known}
            values["history"] = tuple(values.get("history") or ())
            status = UpdateStatus(**values)
        except TypeError as exc:
            LOG.error("update record %s is not a status (%s); starting afresh", self.path, exc)
            return UpdateStatus()
        if status.state not in PHASES:
            LOG.error("update record %s has unknown phase %r", self.path, status.state)
            return UpdateStatus()
        return status

    @property
    def current(self) -> UpdateStatus:
        """The record as it is now: the self-test (another process) continues it after a
        reboot, so a file changed on disk is read again."""
        with self._lock:
            self._refresh()
            return self._status

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp != self._seen:  # written by another process since we last read or wrote it
            self._seen = stamp
            self._status = self._load()

    def move(self, state: str, **changes: Any) -> UpdateStatus:
        """Go to `state` (allowed by TRANSITIONS), with the given fields changed. The file is
        locked for the read-modify-write: `afra run` and the self-test are two processes."""
        with self._lock, self._file_lock():
            self._refresh()
            old = self._status
            if state not in TRANSITIONS[old.state]:
                raise BadMove(f"an update cannot go from {old.state} to {state}")
            history = old.history
            new_attempt = state in _START and not PHASES[old.state].busy
            if new_attempt and old.state != "idle":  # the last attempt ended: keep it
                keep = ("state", "version", "source", "sha256", "message")
                entry = {k: getattr(old, k) for k in keep}
                entry["at"] = old.at
                history = (entry, *history)[:HISTORY]
            base = UpdateStatus(history=history) if new_attempt else old
            new = replace(
                base, **{"progress": 0, **changes, "state": state, "at": self.clock.time()}
            )
            self._write(new)
            self._seen = self._stamp()
            self._status = new
        LOG.info("update: %s %s %s", state, new.version, new.message)
        for observer in self.observers:
            observer(new)
        return new

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as fp:
            fcntl.flock(fp, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fp, fcntl.LOCK_UN)

    def note_progress(self, progress: int, message: str) -> UpdateStatus:
        """Progress within the phase: kept in memory (and written when the phase moves)."""
        with self._lock:
            self._status = replace(self._status, progress=progress, message=message)
            return self._status

    def _write(self, status: UpdateStatus) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_public(self.path, json.dumps(status.as_dict(), indent=2).encode("utf-8"))


AUDITED = {"installing": 0, "kept": 0, "refused": 4, "failed": 8, "rolled_back": 8}


def audit_moves(record: UpdateRecord, audit: Audit) -> None:
    """Record in the audit trail each install, and how it ended."""

    def observe(status: UpdateStatus) -> None:
        if status.state not in AUDITED:
            return
        who = Actor(status.source or "the box")
        why = f"update {status.state}: {status.message}".strip(": ")
        audit.record(
            audit.events.update(
                status.at, who, status.version, outcome=AUDITED[status.state], why=why
            )
        )

    record.observers.append(observe)
