"""The hub's persistent state: one SQLite database (WAL) and the bytes beside it.

Tables: nodes, pairing codes (SHA-256 hashes only) and failed pairings per address, uploads
(one per node, study and revision), their parts, the instances of committed studies, Medis
code attempts on the patient page, commands for nodes, the webhook log and published
policies; files nodes prepared for the hub's users (a study zip per download job) and
their parts; physician accounts (scrypt password hashes) and their sign-in sessions
(SHA-256 of the cookie's token only). Part bytes live in `uploads/<upload_id>/<n>.part`; a
committed study's instance files in `studies/<upload_id>/<sha256 of the SOP Instance
UID>.dcm` with `manifest.json`.
A file's parts live in `file-parts/<file_id>/<n>.part` until it is saved as
`files/<file_id>/<name>`. Every statement is a named constant with `?` parameters; one lock
serialises the connection.

Schema changes only add: new tables (CREATE TABLE IF NOT EXISTS) and new columns with
defaults (ADDED_COLUMNS, added by ALTER TABLE when a database from an older hub is opened),
so a hub keeps its nodes, studies and log across an upgrade.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    certificate_pem TEXT NOT NULL,
    software_version TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    enrolled_at REAL NOT NULL,
    last_heartbeat REAL,
    health TEXT NOT NULL DEFAULT '',
    queue_json TEXT NOT NULL DEFAULT '{}',
    policy_version INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    webhook_key TEXT NOT NULL DEFAULT '',
    api_token TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pairing_codes (
    code_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    node_id TEXT
);
CREATE TABLE IF NOT EXISTS pairing_failures (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pairing_failures_address ON pairing_failures (address, at);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    registration_json TEXT NOT NULL,
    medis_code TEXT NOT NULL,
    physician_key TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    committed_at REAL,
    receipt_json TEXT,
    UNIQUE (node_id, study_uid, revision)
);
CREATE INDEX IF NOT EXISTS uploads_code ON uploads (medis_code);
CREATE INDEX IF NOT EXISTS uploads_physician ON uploads (physician_key);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL REFERENCES uploads (upload_id),
    n INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (upload_id, n)
);
CREATE TABLE IF NOT EXISTS instances (
    upload_id TEXT NOT NULL REFERENCES uploads (upload_id),
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    stream_offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (upload_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS code_attempts (
    id INTEGER PRIMARY KEY,
    code TEXT NOT NULL,
    address TEXT NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS code_attempts_code ON code_attempts (code, at);
CREATE INDEX IF NOT EXISTS code_attempts_address ON code_attempts (address, at);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    type TEXT NOT NULL,
    args_json TEXT NOT NULL,
    state TEXT NOT NULL,
    issued_at REAL NOT NULL,
    delivered_at REAL,
    completed_at REAL,
    ok INTEGER,
    result_json TEXT,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS commands_node ON commands (node_id, state, issued_at);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY,
    vendor TEXT NOT NULL,
    received_at REAL NOT NULL,
    address TEXT NOT NULL,
    headers_json TEXT NOT NULL,
    body_json TEXT NOT NULL,
    node_id TEXT NOT NULL DEFAULT '',
    verified INTEGER NOT NULL DEFAULT 0,
    answered INTEGER NOT NULL DEFAULT 204
);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY,
    policy_json TEXT NOT NULL,
    published_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    registration_json TEXT NOT NULL,
    part_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER,
    sha256 TEXT,
    parts INTEGER,
    saved_at REAL,
    UNIQUE (node_id, job_id)
);
CREATE TABLE IF NOT EXISTS file_parts (
    file_id TEXT NOT NULL REFERENCES files (file_id),
    n INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (file_id, n)
);
CREATE TABLE IF NOT EXISTS physicians (
    login TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    password_set_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS physician_sessions (
    token_hash TEXT PRIMARY KEY,
    login TEXT NOT NULL REFERENCES physicians (login),
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS physician_sessions_login ON physician_sessions (login, created_at);
CREATE TABLE IF NOT EXISTS audit (
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_json TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (node_id, seq)
);
"""

# Columns added after their table first shipped: (table, column, declaration). A database
# made by an older hub gets them on open; its rows take the default.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("nodes", "webhook_key", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "api_token", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "update_json", "TEXT NOT NULL DEFAULT ''"),
    ("webhooks", "node_id", "TEXT NOT NULL DEFAULT ''"),
    ("webhooks", "verified", "INTEGER NOT NULL DEFAULT 0"),
    ("webhooks", "answered", "INTEGER NOT NULL DEFAULT 204"),
)
SQL_TABLE_COLUMNS = "SELECT name FROM pragma_table_info(?)"

OPEN = "open"
COMMITTED = "committed"
SAVED = "saved"
PENDING = "pending"
DELIVERED = "delivered"
DONE = "done"
FAILED = "failed"

SQL_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
SQL_GET_META = "SELECT value FROM meta WHERE key = ?"

_NODE_COLUMNS = (
    "id, name, fingerprint, certificate_pem, software_version, address, enrolled_at, "
    "last_heartbeat, health, queue_json, policy_version, revoked, webhook_key, api_token, "
    "update_json"
)
SQL_INSERT_NODE = """
INSERT INTO nodes (id, name, fingerprint, certificate_pem, software_version, address,
    enrolled_at, webhook_key, api_token)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_NODE_BY_FINGERPRINT = f"SELECT {_NODE_COLUMNS} FROM nodes WHERE fingerprint = ?"
SQL_NODE_BY_ID = f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ?"
SQL_LIST_NODES = f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY enrolled_at"
SQL_HEARTBEAT = """
UPDATE nodes SET last_heartbeat = ?, health = ?, queue_json = ?, software_version = ?,
    policy_version = ?, update_json = ?
WHERE id = ?
"""
SQL_REVOKE_NODE = "UPDATE nodes SET revoked = 1 WHERE id = ?"

SQL_INSERT_PAIRING_CODE = """
INSERT INTO pairing_codes (code_hash, created_at, expires_at) VALUES (?, ?, ?)
"""
SQL_USE_PAIRING_CODE = """
UPDATE pairing_codes SET used_at = ?, node_id = ?
WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?
"""
SQL_INSERT_PAIRING_FAILURE = "INSERT INTO pairing_failures (address, at) VALUES (?, ?)"
SQL_COUNT_PAIRING_FAILURES = "SELECT COUNT(*) FROM pairing_failures WHERE address = ? AND at > ?"

_UPLOAD_COLUMNS = (
    "upload_id, node_id, study_uid, revision, registration_json, medis_code, physician_key, "
    "state, created_at, committed_at, receipt_json"
)
SQL_INSERT_UPLOAD = """
INSERT INTO uploads (upload_id, node_id, study_uid, revision, registration_json, medis_code,
    physician_key, state, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?)
"""
SQL_UPLOAD_BY_KEY = (
    f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE node_id = ? AND study_uid = ? AND revision = ?"
)
SQL_UPLOAD_BY_ID = f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?"
SQL_LIST_UPLOADS = f"SELECT {_UPLOAD_COLUMNS} FROM uploads ORDER BY created_at, upload_id"
SQL_COMMITTED_BY_CODE = f"""
SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE medis_code = ? AND state = 'committed'
ORDER BY committed_at, upload_id
"""
SQL_COMMITTED_BY_PHYSICIAN = f"""
SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE physician_key = ? AND state = 'committed'
ORDER BY committed_at DESC, upload_id
"""
SQL_COMMIT_UPLOAD = """
UPDATE uploads SET state = 'committed', committed_at = ?, receipt_json = ?
WHERE upload_id = ? AND state = 'open'
"""

SQL_UPSERT_PART = """
INSERT INTO parts (upload_id, n, sha256, size, received_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (upload_id, n) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
    received_at = excluded.received_at
"""
SQL_LIST_PARTS = "SELECT n, sha256, size FROM parts WHERE upload_id = ? ORDER BY n"
SQL_COUNT_PARTS = "SELECT COUNT(*) FROM parts WHERE upload_id = ?"

SQL_INSERT_INSTANCE = """
INSERT INTO instances (upload_id, sop_instance_uid, series_uid, sop_class_uid, stream_offset,
    size, sha256, path)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSTANCE_COLUMNS = (
    "upload_id, sop_instance_uid, series_uid, sop_class_uid, stream_offset, size, sha256, path"
)
SQL_LIST_INSTANCES = (
    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE upload_id = ? ORDER BY stream_offset"
)
SQL_INSTANCE = (
    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE upload_id = ? AND sop_instance_uid = ?"
)

SQL_INSERT_CODE_ATTEMPT = "INSERT INTO code_attempts (code, address, at, ok) VALUES (?, ?, ?, ?)"
SQL_COUNT_CODE_FAILURES = "SELECT COUNT(*) FROM code_attempts WHERE code = ? AND ok = 0 AND at > ?"
SQL_COUNT_ADDRESS_FAILURES = (
    "SELECT COUNT(*) FROM code_attempts WHERE address = ? AND ok = 0 AND at > ?"
)

_COMMAND_COLUMNS = (
    "id, node_id, type, args_json, state, issued_at, delivered_at, completed_at, ok, "
    "result_json, error"
)
SQL_INSERT_COMMAND = """
INSERT INTO commands (id, node_id, type, args_json, state, issued_at)
VALUES (?, ?, ?, ?, 'pending', ?)
"""
SQL_DUE_COMMANDS = f"""
SELECT {_COMMAND_COLUMNS} FROM commands
WHERE node_id = ? AND (state = 'pending' OR (state = 'delivered' AND delivered_at <= ?))
ORDER BY issued_at, id
"""
SQL_MARK_DELIVERED = "UPDATE commands SET state = 'delivered', delivered_at = ? WHERE id = ?"
SQL_COUNT_WAITING = "SELECT COUNT(*) FROM commands WHERE node_id = ? AND state = 'pending'"
SQL_COMMAND = f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?"
SQL_NODE_COMMANDS = f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE node_id = ? ORDER BY issued_at"
SQL_COMMAND_RESULT = """
UPDATE commands SET state = ?, completed_at = ?, ok = ?, result_json = ?, error = ?
WHERE id = ? AND state IN ('pending', 'delivered')
"""

SQL_INSERT_WEBHOOK = """
INSERT INTO webhooks (vendor, received_at, address, headers_json, body_json, node_id, verified,
    answered)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_LIST_WEBHOOKS = """
SELECT id, vendor, received_at, address, headers_json, body_json, node_id, verified, answered
FROM webhooks ORDER BY id
"""

_FILE_COLUMNS = (
    "file_id, node_id, job_id, name, registration_json, part_size, state, created_at, size, "
    "sha256, parts, saved_at"
)
SQL_INSERT_FILE = """
INSERT INTO files (file_id, node_id, job_id, name, registration_json, part_size, state,
    created_at)
VALUES (?, ?, ?, ?, ?, ?, 'open', ?)
"""
SQL_FILE_BY_KEY = f"SELECT {_FILE_COLUMNS} FROM files WHERE node_id = ? AND job_id = ?"
SQL_FILE_BY_ID = f"SELECT {_FILE_COLUMNS} FROM files WHERE file_id = ?"
SQL_LIST_FILES = f"SELECT {_FILE_COLUMNS} FROM files ORDER BY created_at, file_id"
SQL_SAVE_FILE = """
UPDATE files SET state = 'saved', size = ?, sha256 = ?, parts = ?, saved_at = ?
WHERE file_id = ? AND state = 'open'
"""
SQL_UPSERT_FILE_PART = """
INSERT INTO file_parts (file_id, n, sha256, size, received_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (file_id, n) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
    received_at = excluded.received_at
"""
SQL_LIST_FILE_PARTS = "SELECT n, sha256, size FROM file_parts WHERE file_id = ? ORDER BY n"
SQL_DROP_FILE_PARTS_FROM = "DELETE FROM file_parts WHERE file_id = ? AND n >= ?"

_PHYSICIAN_COLUMNS = "login, name, password_hash, created_at, password_set_at"
SQL_INSERT_PHYSICIAN = """
INSERT INTO physicians (login, name, password_hash, created_at, password_set_at)
VALUES (?, ?, ?, ?, ?)
"""
SQL_PHYSICIAN = f"SELECT {_PHYSICIAN_COLUMNS} FROM physicians WHERE login = ?"
SQL_LIST_PHYSICIANS = f"SELECT {_PHYSICIAN_COLUMNS} FROM physicians ORDER BY login"
SQL_SET_PHYSICIAN_HASH = (
    "UPDATE physicians SET password_hash = ?, password_set_at = ? WHERE login = ?"
)
SQL_DELETE_PHYSICIAN = "DELETE FROM physicians WHERE login = ?"
SQL_INSERT_SESSION = """
INSERT INTO physician_sessions (token_hash, login, created_at, seen_at) VALUES (?, ?, ?, ?)
"""
SQL_SESSION = """
SELECT s.token_hash, s.login, s.created_at, s.seen_at, p.name
FROM physician_sessions s JOIN physicians p ON p.login = s.login
WHERE s.token_hash = ?
"""
SQL_TOUCH_SESSION = "UPDATE physician_sessions SET seen_at = ? WHERE token_hash = ?"
SQL_DELETE_SESSION = "DELETE FROM physician_sessions WHERE token_hash = ?"
SQL_DELETE_LOGIN_SESSIONS = "DELETE FROM physician_sessions WHERE login = ?"
SQL_DELETE_STALE_SESSIONS = "DELETE FROM physician_sessions WHERE seen_at <= ? OR created_at <= ?"
# Keep a login's `?` newest sessions; older ones end (a bounded table whatever a client does).
SQL_TRIM_LOGIN_SESSIONS = """
DELETE FROM physician_sessions WHERE login = ? AND token_hash NOT IN (
    SELECT token_hash FROM physician_sessions WHERE login = ?
    ORDER BY created_at DESC, token_hash LIMIT ?
)
"""

SQL_LATEST_POLICY = "SELECT version, policy_json FROM policies ORDER BY version DESC LIMIT 1"
SQL_INSERT_POLICY = "INSERT INTO policies (version, policy_json, published_at) VALUES (?, ?, ?)"


class StaleError(ValueError):
    """A write that must be newer than what is stored is not (policy version)."""


@dataclass(frozen=True)
class NodeRow:
    id: str
    name: str
    fingerprint: str
    certificate_pem: str
    software_version: str
    address: str
    enrolled_at: float
    last_heartbeat: float | None
    health: str
    queue_json: str
    policy_version: int | None
    revoked: bool
    # Secrets the node got at enrolment ('' for a node enrolled by an older hub); kept out
    # of reprs so a logged row does not leak them.
    webhook_key: str = field(repr=False)
    api_token: str = field(repr=False)
    update_json: str = ""  # the node's last UpdateReport ('' before it sent one)


@dataclass(frozen=True)
class UploadRow:
    upload_id: str
    node_id: str
    study_uid: str
    revision: int
    registration_json: str
    medis_code: str
    physician_key: str
    state: str
    created_at: float
    committed_at: float | None
    receipt_json: str | None


@dataclass(frozen=True)
class PartRow:
    n: int
    sha256: str
    size: int


@dataclass(frozen=True)
class InstanceRow:
    upload_id: str
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    offset: int
    size: int
    sha256: str
    path: str


@dataclass(frozen=True)
class CommandRow:
    id: str
    node_id: str
    type: str
    args_json: str
    state: str
    issued_at: float
    delivered_at: float | None
    completed_at: float | None
    ok: bool | None
    result_json: str | None
    error: str


@dataclass(frozen=True)
class WebhookRow:
    id: int
    vendor: str
    received_at: float
    address: str
    headers_json: str
    body_json: str
    node_id: str
    verified: bool
    answered: int


@dataclass(frozen=True)
class FileRow:
    file_id: str
    node_id: str
    job_id: str
    name: str
    registration_json: str
    part_size: int
    state: str
    created_at: float
    size: int | None
    sha256: str | None
    parts: int | None
    saved_at: float | None


@dataclass(frozen=True)
class PhysicianRow:
    login: str
    name: str  # as nodes send it (StudyRegistration.referring_physician)
    password_hash: str = field(repr=False)
    created_at: float
    password_set_at: float


@dataclass(frozen=True)
class SessionRow:
    token_hash: str = field(repr=False)
    login: str
    created_at: float
    seen_at: float
    name: str  # the account's physician name


def _node(row: Any) -> NodeRow:
    values = list(row)
    values[11] = bool(values[11])
    return NodeRow(*values)


def _webhook(row: Any) -> WebhookRow:
    values = list(row)
    values[7] = bool(values[7])
    return WebhookRow(*values)


def _command(row: Any) -> CommandRow:
    values = list(row)
    values[8] = None if values[8] is None else bool(values[8])
    return CommandRow(*values)


class HubStore:
    """The database and file tree under `data_dir`; safe to share between threads."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.uploads_dir = data_dir / "uploads"
        self.studies_dir = data_dir / "studies"
        self.file_parts_dir = data_dir / "file-parts"
        self.files_dir = data_dir / "files"
        for directory in (
            data_dir,
            self.uploads_dir,
            self.studies_dir,
            self.file_parts_dir,
            self.files_dir,
        ):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / "hub.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Receipts promise the study is kept: a committed row must survive a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._db:
            self._db.executescript(SCHEMA)
            self._add_columns()
            self._db.execute(SQL_SET_META, ("schema_version", str(SCHEMA_VERSION)))

    def _add_columns(self) -> None:
        """Bring tables made by an older hub up to date (ADDED_COLUMNS)."""
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[0] for row in self._db.execute(SQL_TABLE_COLUMNS, (table,))}
            if column not in present:
                # Names come from the constant above, never from input.
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    # sqlite3 rows are untyped tuples; the row dataclasses give them their types.
    def _one(self, sql: str, params: tuple[object, ...]) -> Any:
        with self._tx() as db:
            return db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._tx() as db:
            return db.execute(sql, params).fetchall()

    def _count(self, sql: str, params: tuple[object, ...]) -> int:
        row = self._one(sql, params)
        return int(row[0]) if row is not None else 0

    # -- paths -------------------------------------------------------------------------------

    def part_dir(self, upload_id: str) -> Path:
        return self.uploads_dir / upload_id

    def part_path(self, upload_id: str, n: int) -> Path:
        return self.part_dir(upload_id) / f"{n}.part"

    def study_dir(self, upload_id: str) -> Path:
        return self.studies_dir / upload_id

    def file_part_dir(self, file_id: str) -> Path:
        return self.file_parts_dir / file_id

    def file_part_path(self, file_id: str, n: int) -> Path:
        return self.file_part_dir(file_id) / f"{n}.part"

    def file_dir(self, file_id: str) -> Path:
        return self.files_dir / file_id

    # -- nodes -------------------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        name: str,
        fingerprint: str,
        certificate_pem: str,
        software_version: str,
        address: str,
        at: float,
        webhook_key: str = "",
        api_token: str = "",
    ) -> None:
        with self._tx() as db:
            db.execute(
                SQL_INSERT_NODE,
                (
                    node_id,
                    name,
                    fingerprint,
                    certificate_pem,
                    software_version,
                    address,
                    at,
                    webhook_key,
                    api_token,
                ),
            )

    def node_by_fingerprint(self, fingerprint: str) -> NodeRow | None:
        row = self._one(SQL_NODE_BY_FINGERPRINT, (fingerprint,))
        return None if row is None else _node(row)

    def node(self, node_id: str) -> NodeRow | None:
        row = self._one(SQL_NODE_BY_ID, (node_id,))
        return None if row is None else _node(row)

    def nodes(self) -> list[NodeRow]:
        return [_node(row) for row in self._all(SQL_LIST_NODES)]

    def record_heartbeat(
        self,
        node_id: str,
        at: float,
        health: str,
        queue_json: str,
        software_version: str,
        policy_version: int,
        update_json: str = "",
    ) -> None:
        with self._tx() as db:
            db.execute(
                SQL_HEARTBEAT,
                (at, health, queue_json, software_version, policy_version, update_json, node_id),
            )

    def revoke_node(self, node_id: str) -> bool:
        with self._tx() as db:
            return db.execute(SQL_REVOKE_NODE, (node_id,)).rowcount == 1

    # -- pairing -----------------------------------------------------------------------------

    def add_pairing_code(self, code_hash: str, at: float, expires_at: float) -> None:
        with self._tx() as db:
            db.execute(SQL_INSERT_PAIRING_CODE, (code_hash, at, expires_at))

    def use_pairing_code(self, code_hash: str, at: float, node_id: str) -> bool:
        """Mark a live, unused code used (atomically); False when there is no such code."""
        with self._tx() as db:
            cursor = db.execute(SQL_USE_PAIRING_CODE, (at, node_id, code_hash, at))
            return cursor.rowcount == 1

    def add_pairing_failure(self, address: str, at: float) -> None:
        with self._tx() as db:
            db.execute(SQL_INSERT_PAIRING_FAILURE, (address, at))

    def pairing_failures(self, address: str, since: float) -> int:
        return self._count(SQL_COUNT_PAIRING_FAILURES, (address, since))

    # -- uploads and parts -------------------------------------------------------------------

    def add_upload(
        self,
        upload_id: str,
        node_id: str,
        study_uid: str,
        revision: int,
        registration_json: str,
        medis_code: str,
        physician_key: str,
        at: float,
    ) -> tuple[UploadRow, bool]:
        """Insert an upload, or find the one already under (node, study, revision);
        True when inserted."""
        with self._tx() as db:
            row = db.execute(SQL_UPLOAD_BY_KEY, (node_id, study_uid, revision)).fetchone()
            created = row is None
            if created:
                db.execute(
                    SQL_INSERT_UPLOAD,
                    (
                        upload_id,
                        node_id,
                        study_uid,
                        revision,
                        registration_json,
                        medis_code,
                        physician_key,
                        at,
                    ),
                )
                row = db.execute(SQL_UPLOAD_BY_ID, (upload_id,)).fetchone()
            return UploadRow(*row), created

    def upload(self, upload_id: str) -> UploadRow | None:
        row = self._one(SQL_UPLOAD_BY_ID, (upload_id,))
        return None if row is None else UploadRow(*row)

    def uploads(self) -> list[UploadRow]:
        return [UploadRow(*row) for row in self._all(SQL_LIST_UPLOADS)]

    def committed_by_code(self, medis_code: str) -> list[UploadRow]:
        rows = self._all(SQL_COMMITTED_BY_CODE, (medis_code,))
        return [UploadRow(*row) for row in rows]

    def committed_by_physician(self, physician_key: str) -> list[UploadRow]:
        rows = self._all(SQL_COMMITTED_BY_PHYSICIAN, (physician_key,))
        return [UploadRow(*row) for row in rows]

    def put_part(self, upload_id: str, n: int, sha256: str, size: int, at: float) -> None:
        with self._tx() as db:
            db.execute(SQL_UPSERT_PART, (upload_id, n, sha256, size, at))

    def parts(self, upload_id: str) -> list[PartRow]:
        return [PartRow(*row) for row in self._all(SQL_LIST_PARTS, (upload_id,))]

    def count_parts(self, upload_id: str) -> int:
        return self._count(SQL_COUNT_PARTS, (upload_id,))

    def commit_upload(
        self, upload_id: str, at: float, receipt_json: str, instances: list[InstanceRow]
    ) -> bool:
        """Record a study as committed with its instances, in one transaction."""
        with self._tx() as db:
            if db.execute(SQL_COMMIT_UPLOAD, (at, receipt_json, upload_id)).rowcount != 1:
                return False
            db.executemany(
                SQL_INSERT_INSTANCE,
                [
                    (
                        i.upload_id,
                        i.sop_instance_uid,
                        i.series_uid,
                        i.sop_class_uid,
                        i.offset,
                        i.size,
                        i.sha256,
                        i.path,
                    )
                    for i in instances
                ],
            )
            return True

    def instances(self, upload_id: str) -> list[InstanceRow]:
        rows = self._all(SQL_LIST_INSTANCES, (upload_id,))
        return [InstanceRow(*row) for row in rows]

    def instance(self, upload_id: str, sop_instance_uid: str) -> InstanceRow | None:
        row = self._one(SQL_INSTANCE, (upload_id, sop_instance_uid))
        return None if row is None else InstanceRow(*row)

    # -- the patient page's attempts ---------------------------------------------------------

    def add_code_attempt(self, code: str, address: str, at: float, ok: bool) -> None:
        with self._tx() as db:
            db.execute(SQL_INSERT_CODE_ATTEMPT, (code, address, at, int(ok)))

    def code_failures(self, code: str, since: float) -> int:
        return self._count(SQL_COUNT_CODE_FAILURES, (code, since))

    def address_failures(self, address: str, since: float) -> int:
        return self._count(SQL_COUNT_ADDRESS_FAILURES, (address, since))

    # -- commands ----------------------------------------------------------------------------

    def add_command(
        self, command_id: str, node_id: str, type_: str, args_json: str, at: float
    ) -> None:
        with self._tx() as db:
            db.execute(SQL_INSERT_COMMAND, (command_id, node_id, type_, args_json, at))

    def deliver_commands(
        self, node_id: str, at: float, redeliver_before: float
    ) -> list[CommandRow]:
        """Pending commands (and ones delivered before `redeliver_before` with no result yet),
        marked delivered at `at`."""
        with self._tx() as db:
            rows = [_command(r) for r in db.execute(SQL_DUE_COMMANDS, (node_id, redeliver_before))]
            db.executemany(SQL_MARK_DELIVERED, [(at, row.id) for row in rows])
            return rows

    def waiting_commands(self, node_id: str) -> int:
        return self._count(SQL_COUNT_WAITING, (node_id,))

    def command(self, command_id: str) -> CommandRow | None:
        row = self._one(SQL_COMMAND, (command_id,))
        return None if row is None else _command(row)

    def node_commands(self, node_id: str) -> list[CommandRow]:
        return [_command(row) for row in self._all(SQL_NODE_COMMANDS, (node_id,))]

    def set_command_result(
        self, command_id: str, at: float, ok: bool, result_json: str, error: str
    ) -> bool:
        """Store the first result of a command; False when it already has one."""
        state = DONE if ok else FAILED
        with self._tx() as db:
            cursor = db.execute(
                SQL_COMMAND_RESULT, (state, at, int(ok), result_json, error, command_id)
            )
            return cursor.rowcount == 1

    # -- webhook log -------------------------------------------------------------------------

    def add_webhook(
        self,
        vendor: str,
        at: float,
        address: str,
        headers: dict[str, str],
        body: object,
        *,
        node_id: str = "",
        verified: bool = False,
        answered: int = 204,
    ) -> None:
        with self._tx() as db:
            db.execute(
                SQL_INSERT_WEBHOOK,
                (
                    vendor,
                    at,
                    address,
                    json.dumps(headers),
                    json.dumps(body),
                    node_id,
                    int(verified),
                    answered,
                ),
            )

    def webhooks(self) -> list[WebhookRow]:
        return [_webhook(row) for row in self._all(SQL_LIST_WEBHOOKS)]

    # -- files -------------------------------------------------------------------------------

    def add_file(
        self,
        file_id: str,
        node_id: str,
        job_id: str,
        name: str,
        registration_json: str,
        part_size: int,
        at: float,
    ) -> tuple[FileRow, bool]:
        """Insert a file, or find the one already under (node, job_id); True when inserted."""
        with self._tx() as db:
            row = db.execute(SQL_FILE_BY_KEY, (node_id, job_id)).fetchone()
            created = row is None
            if created:
                db.execute(
                    SQL_INSERT_FILE,
                    (file_id, node_id, job_id, name, registration_json, part_size, at),
                )
                row = db.execute(SQL_FILE_BY_ID, (file_id,)).fetchone()
            return FileRow(*row), created

    def file(self, file_id: str) -> FileRow | None:
        row = self._one(SQL_FILE_BY_ID, (file_id,))
        return None if row is None else FileRow(*row)

    def files(self) -> list[FileRow]:
        return [FileRow(*row) for row in self._all(SQL_LIST_FILES)]

    def put_file_part(self, file_id: str, n: int, sha256: str, size: int, at: float) -> None:
        with self._tx() as db:
            db.execute(SQL_UPSERT_FILE_PART, (file_id, n, sha256, size, at))

    def file_parts(self, file_id: str) -> list[PartRow]:
        return [PartRow(*row) for row in self._all(SQL_LIST_FILE_PARTS, (file_id,))]

    def save_file(self, file_id: str, size: int, sha256: str, parts: int, at: float) -> bool:
        """Mark a file saved (forgetting parts numbered `parts` and above); False unless open."""
        with self._tx() as db:
            cursor = db.execute(SQL_SAVE_FILE, (size, sha256, parts, at, file_id))
            if cursor.rowcount != 1:
                return False
            db.execute(SQL_DROP_FILE_PARTS_FROM, (file_id, parts))
            return True

    # -- physician accounts and sessions ----------------------------------------------------

    def add_physician(self, login: str, name: str, password_hash: str, at: float) -> bool:
        """Insert an account; False when the login is taken."""
        try:
            with self._tx() as db:
                db.execute(SQL_INSERT_PHYSICIAN, (login, name, password_hash, at, at))
        except sqlite3.IntegrityError:
            return False
        return True

    def physician(self, login: str) -> PhysicianRow | None:
        row = self._one(SQL_PHYSICIAN, (login,))
        return None if row is None else PhysicianRow(*row)

    def physicians(self) -> list[PhysicianRow]:
        return [PhysicianRow(*row) for row in self._all(SQL_LIST_PHYSICIANS)]

    def set_physician_password(self, login: str, password_hash: str, at: float) -> bool:
        """A new password; every session of the login ends with the old one."""
        with self._tx() as db:
            changed = db.execute(SQL_SET_PHYSICIAN_HASH, (password_hash, at, login))
            db.execute(SQL_DELETE_LOGIN_SESSIONS, (login,))
            return changed.rowcount == 1

    def remove_physician(self, login: str) -> bool:
        with self._tx() as db:
            db.execute(SQL_DELETE_LOGIN_SESSIONS, (login,))
            return db.execute(SQL_DELETE_PHYSICIAN, (login,)).rowcount == 1

    def add_session(
        self,
        token_hash: str,
        login: str,
        at: float,
        *,
        idle_before: float,
        started_before: float,
        keep: int,
    ) -> None:
        """A new session. Sessions idle since `idle_before` or started before
        `started_before` are swept, and the login keeps only its `keep` newest."""
        with self._tx() as db:
            db.execute(SQL_DELETE_STALE_SESSIONS, (idle_before, started_before))
            db.execute(SQL_INSERT_SESSION, (token_hash, login, at, at))
            db.execute(SQL_TRIM_LOGIN_SESSIONS, (login, login, keep))

    def session(self, token_hash: str) -> SessionRow | None:
        row = self._one(SQL_SESSION, (token_hash,))
        return None if row is None else SessionRow(*row)

    def touch_session(self, token_hash: str, at: float) -> None:
        with self._tx() as db:
            db.execute(SQL_TOUCH_SESSION, (at, token_hash))

    def end_session(self, token_hash: str) -> None:
        with self._tx() as db:
            db.execute(SQL_DELETE_SESSION, (token_hash,))

    # -- policy ------------------------------------------------------------------------------

    def latest_policy(self) -> tuple[int, str] | None:
        row = self._one(SQL_LATEST_POLICY, ())
        return None if row is None else (int(row[0]), str(row[1]))

    def add_policy(self, version: int, policy_json: str, at: float) -> None:
        """Publish a policy; StaleError unless its version is above every published one."""
        with self._tx() as db:
            row = db.execute(SQL_LATEST_POLICY).fetchone()
            if row is not None and version <= int(row[0]):
                raise StaleError(f"policy version must be above {row[0]}")
            db.execute(SQL_INSERT_POLICY, (version, policy_json, at))

    # -- audit records from nodes --------------------------------------------------------------

    def add_audit(self, node_id: str, events: list[tuple[int, str]], at: float) -> int:
        """Keep each (node, seq) once; the highest seq of the batch, now held. A node sends
        its records in order from its cursor, so the batch's last is its receipt; a gap in
        the seqs is the node's own doing (records removed unsent, which its trail records)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO audit (node_id, seq, event_json, received_at) "
                "VALUES (?, ?, ?, ?)",
                [(node_id, seq, body, at) for seq, body in events],
            )
        return max(seq for seq, _body in events)

    def audit(self, node_id: str | None = None, limit: int = 1000) -> list[tuple[str, int, str]]:
        """The newest `limit` records (of one node, or all), oldest first."""
        if node_id is None:
            rows = self._all(
                "SELECT node_id, seq, event_json FROM audit "
                "ORDER BY received_at DESC, seq DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._all(
                "SELECT node_id, seq, event_json FROM audit WHERE node_id = ? "
                "ORDER BY seq DESC LIMIT ?",
                (node_id, limit),
            )
        return [(str(n), int(q), str(b)) for n, q, b in reversed(rows)]
