"""The download jobs' record, `jobs.sqlite`: each job, its timeline, its webhook subscribers.

A job is one download request (or several joined: the same studies for the same user). Its
timeline is the statuses it went through (`events`, numbered in order, each with its time,
its detail and, for DownloadSaved, the hub's URL of the file); the job's row keeps the last
status and whether it is running, saved or failed. A subscriber is one webhook target of a
job, with its headers (the hub's authorization: the file is 0600) and how many of the
timeline's events it has been posted so far, so its posts resume where they stopped after a
restart. Jobs that ended are forgotten after `downloads.keep_jobs_days`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from afra.store.sqlite import SqliteStore
from medix.models import DownloadStatus

S = DownloadStatus

TERMINAL = {S.RequestFailed, S.ExportFailed, S.DownloadFailed, S.MergeFailed, S.DownloadSaved}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    join_key TEXT NOT NULL,
    subject TEXT NOT NULL,
    userid TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER NOT NULL,
    file_url TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (state, join_key);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS subscribers (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    headers_json TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active',
    last_error TEXT NOT NULL DEFAULT ''
);
"""

RUNNING, SAVED, FAILED = "running", "saved", "failed"


@dataclass(frozen=True)
class Event:
    seq: int
    status: int
    at: float
    detail: str
    file: str

    @property
    def name(self) -> str:
        return DownloadStatus(self.status).name


@dataclass(frozen=True)
class Job:
    id: str
    subject: str
    userid: str
    source: str
    state: str
    status: int
    file_url: str
    error: str
    created_at: float
    updated_at: float
    events: tuple[Event, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "job_id": self.id,
            "subject": self.subject,
            "userid": self.userid,
            "source": self.source,
            "state": self.state,
            "status": self.status,
            "status_name": DownloadStatus(self.status).name,
            "file": self.file_url,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "timeline": [
                {"status": e.status, "name": e.name, "at": e.at, "detail": e.detail}
                for e in self.events
            ],
        }


@dataclass(frozen=True)
class Subscriber:
    id: int
    job_id: str
    uri: str
    headers: dict[str, str]
    delivered: int
    state: str


class JobStore(SqliteStore):
    """The jobs' record: jobs, their events, their webhook subscribers."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, exclusive_fallback=True)  # the box starts on a full disk
        path.chmod(0o600)  # it holds the hub's authorization headers

    def running_with_key(self, join_key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'running' AND join_key = ?", (join_key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def add_job(
        self, job_id: str, join_key: str, subject: str, userid: str, source: str, now: float
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, join_key, subject, userid, source, state, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'running', 0, ?, ?)",
                (job_id, join_key, subject, userid, source, now, now),
            )

    def add_subscriber(self, job_id: str, uri: str, headers: dict[str, str]) -> int | None:
        """A webhook target for the job; None when the same target is already subscribed."""
        encoded = json.dumps(headers, sort_keys=True)
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM subscribers WHERE job_id = ? AND uri = ? AND headers_json = ?",
                (job_id, uri, encoded),
            ).fetchone()
            if row is not None:
                # A repeated request revives a target that had been given up on (its posts
                # resume where they stopped); an active one is left alone.
                revived = db.execute(
                    "UPDATE subscribers SET state = 'active', last_error = '' "
                    "WHERE id = ? AND state != 'active'",
                    (row[0],),
                ).rowcount
                return int(row[0]) if revived else None
            cur = db.execute(
                "INSERT INTO subscribers (job_id, uri, headers_json) VALUES (?, ?, ?)",
                (job_id, uri, encoded),
            )
            return int(cur.lastrowid or 0)

    def add_event(
        self, job_id: str, status: DownloadStatus, now: float, detail: str = "", file: str = ""
    ) -> None:
        with self._transaction() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO events (job_id, seq, status, at, detail, file) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, seq, int(status), now, detail[:500], file),
            )
            state = RUNNING
            if status == S.DownloadSaved:
                state = SAVED
            elif status in TERMINAL:
                state = FAILED
            db.execute(
                "UPDATE jobs SET status = ?, state = ?, updated_at = ?, "
                "file_url = CASE WHEN ? != '' THEN ? ELSE file_url END, "
                "error = CASE WHEN ? = 'failed' THEN ? ELSE error END WHERE id = ?",
                (int(status), state, now, file, file, state, detail[:500], job_id),
            )

    def events(self, job_id: str) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, status, at, detail, file FROM events WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [Event(int(r[0]), int(r[1]), float(r[2]), str(r[3]), str(r[4])) for r in rows]

    def _job(self, row: tuple[object, ...]) -> Job:
        return Job(*row, events=tuple(self.events(str(row[0]))))  # type: ignore[arg-type, misc]

    _COLUMNS = "id, subject, userid, source, state, status, file_url, error, created_at, updated_at"

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, limit: int = 50) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._job(row) for row in rows]

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE state = 'running'"
            ).fetchall()
        return [self._job(row) for row in rows]

    def subscribers(self, job_id: str | None = None, active: bool = False) -> list[Subscriber]:
        sql = "SELECT id, job_id, uri, headers_json, delivered, state FROM subscribers"
        where, params = [], []
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        if active:
            where.append("state = 'active'")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            Subscriber(int(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), int(r[4]), str(r[5]))
            for r in rows
        ]

    def delivered(self, subscriber_id: int, count: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET delivered = ?, last_error = '' WHERE id = ?",
                (count, subscriber_id),
            )

    def end_subscriber(self, subscriber_id: int, state: str, error: str = "") -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET state = ?, last_error = ? WHERE id = ?",
                (state, error[:500], subscriber_id),
            )

    def subscriber_error(self, subscriber_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET last_error = ? WHERE id = ?", (error[:500], subscriber_id)
            )

    def forget_before(self, when: float) -> int:
        with self._transaction() as db:
            old = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state != 'running' AND updated_at < ?", (when,)
                )
            ]
            for job_id in old:
                for table in ("events", "subscribers"):
                    db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return len(old)
