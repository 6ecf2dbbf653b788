"""The audit trail: every record kept on the box, in order, bounded, never silently dropped.

SQLite in `<data_dir>/audit/trail.sqlite`: one row per record, its sequence number the row id
(gap-free, so a repository or the hub can tell a missing record), and one cursor per
destination (the syslog repository, the hub) saying how far it has been sent.

Bounds, and what happens at each:
- The newest `keep` records stay. Older ones are removed only once every destination has
  them; a destination that never takes them holds them until `2 * keep`, and past that the
  oldest go anyway, with a record saying how many left unsent and where.
- When the disk refuses a write (full, I/O error) records wait in memory (up to `memory`) and
  are written when it takes writes again; past that they are counted and, once the disk
  recovers, a record says how many were lost. Either way the log says so once a minute.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import deque
from pathlib import Path

from afra.audit.events import Events
from afra.clock import Clock
from medix.models import AuditEvent

LOG = logging.getLogger("afra.audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    through INTEGER NOT NULL
);
"""
KEEP = 200_000
MEMORY = 10_000
COMPLAIN_EVERY_S = 60.0


def _event(seq: int, body: str) -> AuditEvent:
    return AuditEvent.model_validate({**json.loads(body), "seq": seq})


class AuditTrail:
    """Thread-safe. `record` never raises: a failure to keep a record is itself recorded."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        events: Events,
        keep: int = KEEP,
        memory: int = MEMORY,
        destinations: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.clock = clock
        self.events = events
        self.keep = keep
        self.destinations = destinations
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._waiting: deque[AuditEvent] = deque()
        self._memory = memory
        self._lost = 0
        self._lost_why = ""
        self._complained_at: float | None = None
        self.changed = threading.Condition(self._lock)  # forwarders wait on it
        with self._lock:
            self._open()

    # -- keeping -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            self._trouble(f"cannot open {self.path}: {exc}")
            return None
        self._db = db
        return db

    def record(self, event: AuditEvent) -> None:
        with self._lock:
            self._waiting.append(event)
            if len(self._waiting) > self._memory:
                self._waiting.popleft()
                self._lost += 1
                self._lost_why = self._lost_why or "the storage device refused writes"
            self._flush()
            self.changed.notify_all()

    def flush(self) -> bool:
        """Write what waits in memory; True when nothing waits any more."""
        with self._lock:
            self._flush()
            return not self._waiting

    def _flush(self) -> None:
        if not self._waiting and not self._lost:
            return
        db = self._open()
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            if self._lost:
                lost = self.events.recording_lost(self.clock.time(), self._lost, self._lost_why)
                self._insert(db, lost)
            for event in self._waiting:
                self._insert(db, event)
            removed = self._trim(db)  # in the same transaction: a failure keeps it all waiting
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.rollback()
            self._trouble(f"cannot write {self.path}: {exc}")
            return
        if self._lost:
            LOG.error("%d audit record(s) could not be kept: %s", self._lost, self._lost_why)
        if self._complained_at is not None:
            LOG.warning(
                "the audit trail is written again (%d record(s) kept from memory)",
                len(self._waiting),
            )
            self._complained_at = None
        if removed:
            LOG.error(
                "audit trail: %d record(s) removed before every destination had them "
                "(it holds %d; see audit.keep_records)",
                removed,
                self.keep,
            )
        self._waiting.clear()
        self._lost, self._lost_why = 0, ""

    def _insert(self, db: sqlite3.Connection, event: AuditEvent) -> None:
        body = event.model_dump_json(exclude={"seq"})
        db.execute("INSERT INTO records (at, event) VALUES (?, ?)", (self.clock.time(), body))

    def _trouble(self, what: str) -> None:
        now = self.clock.monotonic()
        if self._complained_at is None or now - self._complained_at >= COMPLAIN_EVERY_S:
            LOG.error(
                "audit trail: %s; %d record(s) wait in memory (room for %d)",
                what,
                len(self._waiting),
                self._memory,
            )
            self._complained_at = now

    def _trim(self, db: sqlite3.Connection) -> int:
        """Remove what every destination has beyond the newest `keep`; past twice that, the
        oldest down to `keep` whatever was sent, in one go, with one record saying how many
        (so a destination away for long costs one notice per `keep` records, not one each).
        Returns how many unsent records went."""
        oldest, newest = db.execute(
            "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM records"
        ).fetchone()
        keep_from = newest - self.keep  # everything at or below may go once it was sent
        if keep_from <= 0:
            return 0
        sent = min((self._through(db, d) for d in self.destinations), default=newest)
        cut = min(keep_from, sent)
        unsent = 0
        hard = newest - 2 * self.keep
        if cut < hard and oldest <= hard:  # unsent records past twice the bound are still here
            unsent = db.execute(
                "SELECT COUNT(*) FROM records WHERE seq > ? AND seq <= ?", (cut, keep_from)
            ).fetchone()[0]
            cut = keep_from
        db.execute("DELETE FROM records WHERE seq <= ?", (cut,))
        if unsent:
            self._insert(
                db,
                self.events.recording_lost(
                    self.clock.time(), unsent, "removed unsent to stay within the bound"
                ),
            )
        return int(unsent)

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _through(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT through FROM cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def after(self, seq: int, limit: int = 200) -> list[AuditEvent]:
        """Records with a sequence number above `seq`, oldest first."""
        with self._lock:
            self._flush()
            db = self._open()
            if db is None:
                return []
            rows = db.execute(
                "SELECT seq, event FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [_event(n, body) for n, body in rows]

    def newest(self, limit: int = 200) -> list[AuditEvent]:
        with self._lock:
            self._flush()
            db = self._open()
            if db is None:
                return []
            rows = db.execute(
                "SELECT seq, event FROM records ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_event(n, body) for n, body in rows]

    def cursor(self, name: str, *, locked: bool = False) -> int:
        if locked:  # the caller holds `changed` (the trail's lock)
            db = self._open()
            return 0 if db is None else self._through(db, name)
        with self._lock:
            return self.cursor(name, locked=True)

    def has_after(self, seq: int, *, locked: bool = False) -> bool:
        """Whether a record above `seq` is kept or waiting (`locked`: the caller holds the
        trail's lock, as a forwarder does while it decides to wait)."""
        if not locked:
            with self._lock:
                return self.has_after(seq, locked=True)
        if self._waiting:
            return True
        db = self._open()
        if db is None:
            return False
        return (
            db.execute("SELECT 1 FROM records WHERE seq > ? LIMIT 1", (seq,)).fetchone() is not None
        )

    def sent(self, name: str, through: int) -> None:
        """Destination `name` holds every record up to `through`."""
        with self._lock:
            db = self._open()
            if db is None:
                return
            try:
                db.execute(
                    "INSERT INTO cursors (name, through) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET through = MAX(through, excluded.through)",
                    (name, through),
                )
            except sqlite3.Error as exc:
                self._trouble(f"cannot write {self.path}: {exc}")

    def waiting(self) -> int:
        """Records held in memory because the disk refused them."""
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._db is not None:
                self._db.close()
                self._db = None
