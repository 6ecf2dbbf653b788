"""The audit log: who did what on the web app, and who saw which study's Medis code, when.

SQLite in `<data_dir>/web/audit.sqlite`. A row names the operator (the name given at sign-in),
the address of their device and the action. For a revealed code it keeps the study and only
the code's last four symbols: enough to say which code was seen, while the log itself is not
a list of working codes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from afra.store.sqlite import SqliteStore

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


class AuditLog(SqliteStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        super().__init__(path, SCHEMA)

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
        row = (at, actor[:80], address[:64], action, study_uid, patient_name[:120])
        with self._transaction() as db:
            db.execute(SQL_ADD, (*row, code[-4:], detail[:500]))
            db.execute(SQL_TRIM, (KEEP_ROWS,))

    def entries(self, limit: int = 200) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(SQL_LIST, (limit,)).fetchall()
        return [AuditEntry(*r) for r in rows]

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


def _cell(value: str) -> str:
    # A cell starting with = + - @ is a formula in a spreadsheet: names come from DICOM headers.
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
