"""The audit log: who did what on the web app, and who saw which study's Medis code, when.

SQLite in `<data_dir>/web/audit.sqlite`. A row names the operator (the name given at sign-in),
the address of their device and the action. For a revealed code it keeps the study and only
the code's last four symbols: enough to say which code was seen, while the log itself is not
a list of working codes.

A full or failing disk must not keep the dashboard from starting or a request from finishing,
and a record must not vanish silently: a record that cannot be written (the file will not
open, or the write fails) is kept in memory, shown with the others, and written with the next
one once the disk takes it. At most PENDING_MAX are kept; older ones are dropped and the log
later says how many. While records wait, the problem is reported (`on_problem`, which the
app turns into the health condition `storage_unwritable`, so the dashboard shows it) and
logged as an ERROR at most once every ERROR_EVERY_S.
"""

from __future__ import annotations

import csv
import io
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from afra.clock import Clock, SystemClock
from afra.store.sqlite import SqliteStore
from afra_web.state import ThrottledError

LOG = logging.getLogger("afra.web")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    code_tail TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
"""
SQL_ADD = """
INSERT INTO audit (at, actor, address, action, study_uid, patient_name, code_tail, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_LIST = """
SELECT id, at, actor, address, action, study_uid, patient_name, code_tail, detail
FROM audit ORDER BY id DESC LIMIT ?
"""
SQL_TRIM = "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?"
KEEP_ROWS = 100_000
PENDING_MAX = 1000  # records held in memory while the file cannot be written
ERROR_EVERY_S = 60.0
LOST = "audit records lost"

Row = tuple[float, str, str, str, str, str, str, str]

COLUMNS = ("time", "operator", "address", "action", "study_uid", "patient", "code", "detail")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    address: str
    action: str
    study_uid: str
    patient_name: str
    code_tail: str
    detail: str

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).astimezone().isoformat(timespec="seconds")

    @property
    def code_shown(self) -> str:
        return f"…{self.code_tail}" if self.code_tail else ""


class AuditFile(SqliteStore):
    """The audit table on disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            super().__init__(path, SCHEMA)
        except BaseException:
            db = getattr(self, "_db", None)  # connected, then a pragma failed (disk full)
            if db is not None:
                db.close()
            raise

    def insert(self, rows: list[Row]) -> None:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(SQL_ADD, rows)
                db.execute(SQL_TRIM, (KEEP_ROWS,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def rows(self, limit: int) -> list[AuditEntry]:
        with self._lock:
            found = self._db.execute(SQL_LIST, (limit,)).fetchall()
        return [AuditEntry(*r) for r in found]


class AuditLog:
    """The log the app writes to: the file when it takes records, memory while it does not."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        opener: Callable[[Path], AuditFile] | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        self._opener = opener or AuditFile
        self._on_problem = on_problem or (lambda _text: None)
        self._lock = threading.Lock()
        self._file: AuditFile | None = None
        self._pending: deque[Row] = deque()
        self._lost = 0
        self._problem = ""
        self._error = ThrottledError(self.clock, ERROR_EVERY_S)
        with self._lock:
            self._open()

    @property
    def problem(self) -> str:
        """Why records wait in memory ("" when the file takes them)."""
        return self._problem

    def add(
        self,
        at: float,
        actor: str,
        address: str,
        action: str,
        *,
        study_uid: str = "",
        patient_name: str = "",
        code: str = "",
        detail: str = "",
    ) -> None:
        """Record an action; never raises for the disk (the record waits in memory)."""
        row: Row = (
            at,
            actor[:80],
            address[:64],
            action,
            study_uid,
            patient_name[:120],
            code[-4:],
            detail[:500],
        )
        with self._lock:
            self._pending.append(row)
            self._flush()
            while len(self._pending) > PENDING_MAX:
                self._pending.popleft()
                self._lost += 1

    def entries(self, limit: int = 200) -> list[AuditEntry]:
        """Newest first; records still waiting for the disk included (with id 0)."""
        with self._lock:
            self._flush()
            waiting = [AuditEntry(0, *row) for row in reversed(self._pending)]
            stored: list[AuditEntry] = []
            if self._file is not None and len(waiting) < limit:
                try:
                    stored = self._file.rows(limit - len(waiting))
                except sqlite3.Error as exc:
                    self._failed(exc, reading=True)
        return (waiting + stored)[:limit]

    def retry(self) -> str:
        """Try the disk again (the dashboard's status polls do, so a recovered disk is seen
        without waiting for the next audited action); returns the problem, if any."""
        with self._lock:
            if self._problem:
                self._flush()
            return self._problem

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for e in reversed(self.entries(KEEP_ROWS)):
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        e.when,
                        e.actor,
                        e.address,
                        e.action,
                        e.study_uid,
                        e.patient_name,
                        e.code_shown,
                        e.detail,
                    )
                ]
            )
        return out.getvalue()

    # -- under self._lock -------------------------------------------------------------------

    def _open(self) -> bool:
        if self._file is None:
            try:
                self._file = self._opener(self.path)
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
                return False
        return True

    def _flush(self) -> None:
        """Write what waits; when the file takes it (or nothing waits), the problem is over."""
        if not self._open():
            return
        assert self._file is not None
        if self._pending:
            rows = list(self._pending)
            if self._lost:
                note = f"{self._lost} older records could not be kept while the disk failed"
                rows.insert(0, (rows[0][0], "", "", LOST, "", "", "", note))
            try:
                self._file.insert(rows)
            except sqlite3.Error as exc:
                self._failed(exc)
                if "disk is full" not in str(exc):
                    # An I/O error may leave the connection unusable: open afresh next time.
                    with suppress(sqlite3.Error):
                        self._file.close()
                    self._file = None
                return
            if self._problem:
                LOG.warning(
                    "audit log %s written again: %d waiting records saved", self.path, len(rows)
                )
            self._pending.clear()
            self._lost = 0
        if self._problem:
            self._problem = ""
            self._error.reset()
            self._on_problem("")

    def _failed(self, exc: BaseException, *, reading: bool = False) -> None:
        self._error(
            "audit log %s cannot be %s (%s): %d records wait in memory, %d lost",
            self.path,
            "read" if reading else "written",
            exc,
            len(self._pending),
            self._lost,
        )
        problem = f"the audit log cannot be written ({exc}): its records wait in memory"
        if not reading and problem != self._problem:
            self._problem = problem
            self._on_problem(problem)


def _cell(value: str) -> str:
    # A cell starting with = + - @ is a formula in a spreadsheet: names come from DICOM headers.
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
