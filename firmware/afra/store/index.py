"""The study index: an embedded SQLite database (WAL, synchronous FULL) of studies and instances.

A received instance's row is the one exception (`add_instance`): it is committed without
waiting for the disk, because its file and name are durable before it and `app.recover`
indexes again, at start-up, any instance file a power cut left the index without.

A study revision's state is a column, its moves the table in store/lifecycle.py (received ->
complete -> queued -> uploading -> delivered, purged; uploading -> queued when registered
afresh under a new number: uplink/lost.py), held by CHECK constraints. An instance
that arrives for a study already complete opens a new revision of that study, which holds
only the new instances, so nothing is sent twice. Every statement is a named constant with
`?` parameters; those that read or move a state are written with lifecycle's `where`/`move`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from afra.store.lifecycle import UPLOADABLE, WAITING_FOR_UPLINK, StudyState, check_sql, move, where
from afra.store.records import Header
from afra.store.sqlite import SqliteStore

LOG = logging.getLogger("afra.store")

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_phone TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    instance_count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    waiting_since REAL,
    completed_at REAL,
    UNIQUE (study_uid, revision)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies (id),
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_id);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    peer_address TEXT NOT NULL DEFAULT '',
    sop_class_uid TEXT NOT NULL DEFAULT '',
    sop_instance_uid TEXT NOT NULL DEFAULT '',
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""

# The box's own self-test stores objects under this prefix (afra.update.selftest) and removes
# them at once; study completion never picks them up, so they get no code and never leave.
SELFTEST_UID_PREFIX = "1.2.826.0.1.3680043.8.498.77."
SELFTEST_LIKE = SELFTEST_UID_PREFIX + "%"

RECEIVED, COMPLETE, QUEUED, UPLOADING, DELIVERED = (
    StudyState.RECEIVED,
    StudyState.COMPLETE,
    StudyState.QUEUED,
    StudyState.UPLOADING,
    StudyState.DELIVERED,
)

# The studies table as of version 3: version 2's columns, and the lifecycle's CHECKs (SQLite
# adds a constraint only by rebuilding the table: migration 3).
_STUDY_COLUMNS = (
    "id, study_uid, revision, state, state_reason, patient_id, patient_name, "
    "patient_birth_date, patient_phone, accession_number, study_date, study_description, "
    "referring_physician, instance_count, bytes, expected_count, first_received_at, "
    "last_received_at, waiting_since, completed_at, medis_code, part_size, upload_id, "
    "attempts, next_attempt_at, last_error, receipt, delivered_at, stream_sha256, purged_at"
)
STUDIES_V3 = f"""
CREATE TABLE studies_v3 (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_phone TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    instance_count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    waiting_since REAL,
    completed_at REAL,
    medis_code TEXT,
    part_size INTEGER,
    upload_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    receipt TEXT,
    delivered_at REAL,
    stream_sha256 TEXT,
    purged_at REAL,
    UNIQUE (study_uid, revision),
    {check_sql()}
)
"""

# Schema changes after version 1, applied in order to an older database at open.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE studies ADD COLUMN medis_code TEXT",
        # One code per study: every revision of a study carries it, no other study may.
        "CREATE INDEX IF NOT EXISTS studies_medis_code ON studies (medis_code)",
        "ALTER TABLE studies ADD COLUMN part_size INTEGER",
        "ALTER TABLE studies ADD COLUMN upload_id TEXT",
        "ALTER TABLE studies ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE studies ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0",
        "ALTER TABLE studies ADD COLUMN last_error TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE studies ADD COLUMN receipt TEXT",
        "ALTER TABLE studies ADD COLUMN delivered_at REAL",
        "ALTER TABLE studies ADD COLUMN stream_sha256 TEXT",
        "ALTER TABLE studies ADD COLUMN purged_at REAL",
        "ALTER TABLE instances ADD COLUMN sha256 TEXT",
        "CREATE INDEX IF NOT EXISTS studies_purgeable ON studies (delivered_at) "
        "WHERE state = 'delivered' AND purged_at IS NULL",
    ),
    3: (
        # The lifecycle's CHECKs: a new table, the rows copied, the old one replaced. A row
        # the table would refuse fails the migration (and the box's start) instead of being
        # dropped; the transaction leaves the old table as it was.
        STUDIES_V3,
        f"INSERT INTO studies_v3 ({_STUDY_COLUMNS}) SELECT {_STUDY_COLUMNS} FROM studies",
        "DROP TABLE studies",
        "ALTER TABLE studies_v3 RENAME TO studies",
        "CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_received_at)",
        "CREATE INDEX IF NOT EXISTS studies_medis_code ON studies (medis_code)",
        "CREATE INDEX IF NOT EXISTS studies_purgeable ON studies (delivered_at) "
        f"WHERE {where(DELIVERED)} AND purged_at IS NULL",
    ),
}

# Migrations a start may put off when the disk is full (the index works without them).
DEFERRABLE = frozenset({3})

_COMPLETE = move((RECEIVED,), COMPLETE)
_QUEUE = move((COMPLETE,), QUEUED)
_UPLOADING = move(UPLOADABLE, UPLOADING)
_DELIVERED = move(UPLOADABLE, DELIVERED)
_AFRESH = move((UPLOADING,), QUEUED)

SQL_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
SQL_GET_META = "SELECT value FROM meta WHERE key = ?"
SQL_FIND_INSTANCE = "SELECT path, size, study_id FROM instances WHERE sop_instance_uid = ?"
SQL_OPEN_REVISION = (
    f"SELECT id, revision FROM studies WHERE study_uid = ? AND {where(RECEIVED)} "
    "ORDER BY revision DESC LIMIT 1"
)
SQL_NEXT_REVISION = "SELECT COALESCE(MAX(revision) + 1, 0) FROM studies WHERE study_uid = ?"
SQL_NEW_STUDY = f"""
INSERT INTO studies (study_uid, revision, state, patient_id, patient_name, patient_birth_date,
    patient_phone, accession_number, study_date, study_description, referring_physician,
    first_received_at, last_received_at)
VALUES (?, ?, '{RECEIVED.value}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_INSERT_INSTANCE = """
INSERT INTO instances (sop_instance_uid, study_id, series_uid, sop_class_uid, transfer_syntax,
    modality, path, size, received_at, calling_ae)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_COUNT_INSTANCE = """
UPDATE studies SET instance_count = instance_count + 1, bytes = bytes + ?,
    last_received_at = MAX(last_received_at, ?)
WHERE id = ?
"""
SQL_HELD_COPY = """
SELECT i.sha256, i.calling_ae, s.patient_id
FROM instances i JOIN studies s ON s.id = i.study_id WHERE i.sop_instance_uid = ?
"""
SQL_RESTORED_OF = """
SELECT i.size, i.study_id FROM instances i JOIN studies s ON s.id = i.study_id
WHERE i.sop_instance_uid = ? AND i.path = ? AND i.sha256 IS ? AND s.purged_at IS NULL
"""
SQL_RESTORE_INSTANCE = """
UPDATE instances SET series_uid = ?, sop_class_uid = ?, transfer_syntax = ?, modality = ?,
    size = ?, received_at = ?, calling_ae = ?
WHERE sop_instance_uid = ?
"""
SQL_RESTORE_STUDY = "UPDATE studies SET bytes = bytes + ? WHERE id = ?"
SQL_INSERT_CONFLICT = """
INSERT INTO conflicts (sop_instance_uid, path, size, received_at, calling_ae)
VALUES (?, ?, ?, ?, ?)
"""
SQL_INSERT_QUARANTINE = """
INSERT INTO quarantine (path, received_at, calling_ae, peer_address, sop_class_uid,
    sop_instance_uid, status, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_DUE_STUDIES = f"""
SELECT id, study_uid, revision, instance_count, last_received_at, waiting_since, expected_count
FROM studies WHERE {where(RECEIVED)} AND last_received_at <= ? AND study_uid NOT LIKE ?
ORDER BY last_received_at
"""
SQL_STUDY_TOTAL = "SELECT COALESCE(SUM(instance_count), 0) FROM studies WHERE study_uid = ?"
SQL_MARK_COMPLETE = f"""
UPDATE studies SET {_COMPLETE[0]}, completed_at = ?, expected_count = ?, state_reason = ?
WHERE id = ? AND {_COMPLETE[1]} AND last_received_at <= ?
"""
SQL_MARK_WAITING = f"""
UPDATE studies SET waiting_since = COALESCE(waiting_since, ?), expected_count = ?,
    state_reason = ?
WHERE id = ? AND {where(RECEIVED)}
"""
SQL_LIST_STUDIES = """
SELECT id, study_uid, revision, state, state_reason, patient_id, patient_name, study_date,
    instance_count, bytes, expected_count, first_received_at, last_received_at, completed_at,
    medis_code, attempts, last_error
FROM studies ORDER BY last_received_at DESC LIMIT ?
"""
SQL_STUDY_INSTANCES = """
SELECT sop_instance_uid, series_uid, sop_class_uid, transfer_syntax, path, size
FROM instances WHERE study_id = ? ORDER BY series_uid, path
"""
SQL_ALL_PATHS = """
SELECT i.path FROM instances i JOIN studies s ON s.id = i.study_id WHERE s.purged_at IS NULL
"""
SQL_LIST_QUARANTINE = """
SELECT id, path, received_at, calling_ae, peer_address, sop_class_uid, sop_instance_uid,
    status, reason
FROM quarantine ORDER BY id DESC LIMIT ?
"""
SQL_STUDIES_WITHOUT_CODE = f"""
SELECT id, study_uid FROM studies WHERE {where(COMPLETE)} AND medis_code IS NULL
ORDER BY completed_at
"""
SQL_CODE_TAKEN = "SELECT 1 FROM studies WHERE medis_code = ?"
SQL_CODE_OF_STUDY = """
SELECT medis_code FROM studies WHERE study_uid = ? AND medis_code IS NOT NULL LIMIT 1
"""
SQL_GET_PART_SIZE = "SELECT part_size FROM studies WHERE id = ?"
SQL_SET_PART_SIZE = "UPDATE studies SET part_size = ? WHERE id = ? AND part_size IS NULL"
SQL_GET_CODE = "SELECT medis_code FROM studies WHERE id = ?"
SQL_SET_CODE = f"""
UPDATE studies SET medis_code = ?, {_QUEUE[0]} WHERE id = ? AND medis_code IS NULL AND {_QUEUE[1]}
"""
SQL_NEXT_UPLOAD = f"""
SELECT id FROM studies WHERE {where(*UPLOADABLE)} AND next_attempt_at <= ?
ORDER BY next_attempt_at, completed_at LIMIT 1
"""
SQL_UPLOAD_STUDY = """
SELECT id, study_uid, revision, state, medis_code, upload_id, attempts, patient_id,
    patient_name, patient_birth_date, patient_phone, accession_number, study_date,
    study_description, referring_physician, instance_count, bytes, completed_at
FROM studies WHERE id = ?
"""
SQL_UPLOAD_INSTANCES = """
SELECT sop_instance_uid, series_uid, sop_class_uid, modality, path, size, sha256
FROM instances WHERE study_id = ? ORDER BY series_uid, path
"""
SQL_SET_HASH = "UPDATE instances SET sha256 = ? WHERE sop_instance_uid = ?"
SQL_SET_STREAM_HASH = "UPDATE studies SET stream_sha256 = ? WHERE id = ?"
SQL_GET_STREAM_HASH = "SELECT stream_sha256 FROM studies WHERE id = ?"
SQL_PURGEABLE = f"""
SELECT id FROM studies WHERE {where(DELIVERED)} AND purged_at IS NULL AND delivered_at <= ?
"""
SQL_MARK_PURGED = "UPDATE studies SET purged_at = ? WHERE id = ?"
SQL_STUDY_OF_INSTANCE = """
SELECT s.state, s.purged_at FROM instances i JOIN studies s ON s.id = i.study_id
WHERE i.sop_instance_uid = ?
"""
SQL_SET_UPLOADING = f"""
UPDATE studies SET {_UPLOADING[0]}, upload_id = ?
WHERE id = ? AND {_UPLOADING[1]}
"""
SQL_REGISTER_AFRESH = f"""
UPDATE studies SET {_AFRESH[0]}, revision = ?, upload_id = NULL, stream_sha256 = NULL,
    part_size = NULL
WHERE id = ? AND revision = ? AND {_AFRESH[1]}
"""
SQL_FORGET_HASHES = "UPDATE instances SET sha256 = NULL WHERE study_id = ?"
SQL_CONFLICTS_OF = """
SELECT id, sop_instance_uid, path, size, received_at, calling_ae FROM conflicts
WHERE sop_instance_uid = ? ORDER BY id DESC
"""
SQL_FORGET_CONFLICT = "DELETE FROM conflicts WHERE id = ?"
SQL_RECORD_FAILURE = """
UPDATE studies SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?
"""
SQL_MARK_DELIVERED = f"""
UPDATE studies SET {_DELIVERED[0]}, receipt = ?, delivered_at = ?, last_error = '',
    next_attempt_at = 0
WHERE id = ? AND {_DELIVERED[1]}
"""
SQL_QUEUE_STATS = f"""
SELECT COUNT(*), COALESCE(MIN(completed_at), 0), COALESCE(SUM(bytes), 0)
FROM studies WHERE {where(*WAITING_FOR_UPLINK)}
"""
SQL_RECENT_INSTANCES = "SELECT received_at, size FROM instances ORDER BY rowid DESC"
SQL_DELIVERED_SINCE = f"""
SELECT delivered_at, bytes FROM studies WHERE {where(DELIVERED)} AND delivered_at >= ?
"""
SQL_SELFTEST_PATHS = """
SELECT i.path FROM instances i JOIN studies s ON s.id = i.study_id
WHERE s.study_uid LIKE ? AND i.calling_ae = ?
"""
SQL_DELETE_SELFTEST_INSTANCES = """
DELETE FROM instances
WHERE calling_ae = ? AND study_id IN (SELECT id FROM studies WHERE study_uid LIKE ?)
"""
SQL_DELETE_SELFTEST_STUDIES = """
DELETE FROM studies WHERE study_uid LIKE ?
AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.study_id = studies.id)
"""
SQL_LIST_CONFLICTS = """
SELECT id, sop_instance_uid, path, size, received_at, calling_ae FROM conflicts ORDER BY id
"""


@dataclass(frozen=True)
class StoredInstance:
    path: str
    size: int
    study_id: int


@dataclass(frozen=True)
class AddedInstance:
    study_id: int
    revision: int
    new_study_row: bool


@dataclass(frozen=True)
class DueStudy:
    id: int
    study_uid: str
    revision: int
    instance_count: int
    last_received_at: float
    waiting_since: float | None
    expected_count: int | None


@dataclass(frozen=True)
class StudyRow:
    id: int
    study_uid: str
    revision: int
    state: str
    state_reason: str
    patient_id: str
    patient_name: str
    study_date: str
    instance_count: int
    bytes: int
    expected_count: int | None
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    medis_code: str | None = None
    attempts: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int


@dataclass(frozen=True)
class HeldCopy:
    """What a copy sent again of a held instance is judged against (Receiver._restore)."""

    sha256: str | None  # None until the uplink hashed its study for the hub
    calling_ae: str  # who sent the held copy
    patient_id: str  # its study row's Patient ID


@dataclass(frozen=True)
class UploadStudy:
    """A study revision as the uplink sends it."""

    id: int
    study_uid: str
    revision: int
    state: str
    medis_code: str | None
    upload_id: str | None
    attempts: int
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_phone: str
    accession_number: str
    study_date: str
    study_description: str
    referring_physician: str
    instance_count: int
    bytes: int
    completed_at: float | None


SQL_HELD_INSTANCES = """
SELECT i.sop_instance_uid, i.series_uid, i.sop_class_uid, i.modality, i.path, i.size, i.sha256
FROM instances i JOIN studies s ON s.id = i.study_id
WHERE s.study_uid = ? AND s.purged_at IS NULL ORDER BY i.series_uid, i.path
"""
SQL_STUDY_HOLDING = f"""
SELECT COUNT(*), SUM({where(RECEIVED)}), SUM(purged_at IS NOT NULL) FROM studies
WHERE study_uid = ?
"""
SQL_REPORT_INSTANCES = """
SELECT i.sop_class_uid, i.path, i.received_at, s.purged_at IS NOT NULL
FROM instances i JOIN studies s ON s.id = i.study_id
WHERE s.study_uid = ? AND (i.sop_class_uid LIKE '1.2.840.10008.5.1.4.1.1.88.%'
    OR i.sop_class_uid = '1.2.840.10008.5.1.4.1.1.104.1')
"""
SQL_STUDIES_OF_PATIENT = """
SELECT DISTINCT study_uid FROM studies WHERE patient_id = ? ORDER BY first_received_at
"""


@dataclass(frozen=True)
class Holding:
    """What the box holds of a study, over all its revisions."""

    revisions: int
    receiving: int  # revisions still receiving
    purged: int  # revisions whose local copy was removed after delivery

    @property
    def whole(self) -> bool:
        """Every revision is complete and on disk."""
        return self.revisions > 0 and not self.receiving and not self.purged


@dataclass(frozen=True)
class ReportInstance:
    sop_class_uid: str
    path: str
    received_at: float
    purged: bool


@dataclass(frozen=True)
class UploadInstance:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class ConflictRow:
    id: int
    sop_instance_uid: str
    path: str
    size: int
    received_at: float
    calling_ae: str


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    path: str
    received_at: float
    calling_ae: str
    peer_address: str
    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str


class Index(SqliteStore):
    """The study index. Thread-safe: one connection, writes serialised by a lock."""

    def __init__(
        self, path: Path, *, reserve_wal: bool = False, exclusive_fallback: bool = True
    ) -> None:
        # The running box reserves the WAL (one commit per received instance); CLI commands
        # that open the index for a moment do not. A receiving worker never opens it in the
        # exclusive mode (afra.dicom.workers).
        super().__init__(
            path,
            SCHEMA,
            timeout=30.0,
            reserve_wal=reserve_wal,
            exclusive_fallback=exclusive_fallback,
        )
        try:
            self._migrate()
        except BaseException:
            self.close()  # in exclusive mode an open connection would lock the file
            raise

    def _version(self, db: sqlite3.Connection) -> int:
        row = db.execute(SQL_GET_META, ("schema_version",)).fetchone()
        return int(row[0]) if row else 1

    def _migrate(self) -> None:
        if self._version(self._db) == SCHEMA_VERSION:
            return  # no commit: a start on a full disk could not make one
        for target in sorted(MIGRATIONS):
            try:
                self._migrate_to(target)
            except sqlite3.OperationalError as exc:
                if target not in DEFERRABLE or exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                # A full disk must not keep the box from starting (it must start to deliver
                # and purge): the index works as it is, the migration waits for room.
                LOG.warning(
                    "%s stays at schema version %d: migration %d needs room on the disk "
                    "(%s); it runs at a start with room",
                    self.path,
                    target - 1,
                    target,
                    exc,
                )
                return

    def _migrate_to(self, target: int) -> None:
        # A table rebuilt (migration 3) is dropped while instances still refer to it: foreign
        # keys are off for the migration (the pragma only takes effect outside a transaction)
        # and checked whole before it commits.
        self._db.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._transaction() as db:
                # Read inside the write transaction: two processes opening at once migrate once.
                if self._version(db) >= target:
                    return
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise sqlite3.IntegrityError(
                        f"the index's migration left {len(broken)} rows without their study"
                    )
                db.execute(SQL_SET_META, ("schema_version", str(target)))
        finally:
            self._db.execute("PRAGMA foreign_keys = ON")

    # -- receive path ------------------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        # On the reader connection: it does not wait for another association's commit.
        row = self._read_one(SQL_FIND_INSTANCE, (sop_instance_uid,))
        return None if row is None else StoredInstance(*row)

    def add_instance(
        self, header: Header, rel_path: str, size: int, now: float, calling_ae: str
    ) -> AddedInstance:
        """Record a durable instance under the study's open revision (opening one if needed).

        Grouped: associations storing at the same moment share one commit.
        """

        def work(db: sqlite3.Connection) -> AddedInstance:
            row = db.execute(SQL_OPEN_REVISION, (header.study_uid,)).fetchone()
            new_row = row is None
            if new_row:
                revision = db.execute(SQL_NEXT_REVISION, (header.study_uid,)).fetchone()[0]
                who = header.demographics()
                cur = db.execute(
                    SQL_NEW_STUDY,
                    (
                        header.study_uid,
                        revision,
                        who.patient_id,
                        who.patient_name,
                        who.patient_birth_date,
                        who.patient_phone,
                        who.accession_number,
                        who.study_date,
                        who.study_description,
                        who.referring_physician,
                        now,
                        now,
                    ),
                )
                study_id = int(cur.lastrowid or 0)
            else:
                study_id, revision = int(row[0]), int(row[1])
            db.execute(
                SQL_INSERT_INSTANCE,
                (
                    header.sop_instance_uid,
                    study_id,
                    header.series_uid,
                    header.sop_class_uid,
                    header.transfer_syntax,
                    header.modality,
                    rel_path,
                    size,
                    now,
                    calling_ae,
                ),
            )
            db.execute(SQL_COUNT_INSTANCE, (size, now, study_id))
            return AddedInstance(study_id=study_id, revision=revision, new_study_row=new_row)

        return self._grouped(work, flush=False)

    def held_copy(self, sop_instance_uid: str) -> HeldCopy | None:
        """The held instance's file hash, who sent it and its study's patient; None when
        the UID is not indexed."""
        row = self._read_one(SQL_HELD_COPY, (sop_instance_uid,))
        return None if row is None else HeldCopy(row[0], *(str(v) for v in row[1:]))

    def restore_instance(
        self,
        header: Header,
        rel_path: str,
        size: int,
        now: float,
        calling_ae: str,
        sha256: str | None,
    ) -> bool:
        """A copy sent again of an instance whose file had gone from the device, now durable
        under the row's own path. A row not hashed yet (`sha256` None: its study never went
        to the hub, and the uplink hashes it before it does) takes the copy's attributes,
        size and sender; a hashed row was matched by the copy's bytes (`sha256`, the same
        file the hub was told of) and stays as it is. False when the row no longer names
        that path with that hash, or its study was purged meanwhile."""
        uid = header.sop_instance_uid
        with self._transaction() as db:
            row = db.execute(SQL_RESTORED_OF, (uid, rel_path, sha256)).fetchone()
            if row is None:
                return False
            if sha256 is not None:
                return True
            old_size, study_id = int(row[0]), int(row[1])
            db.execute(
                SQL_RESTORE_INSTANCE,
                (
                    header.series_uid,
                    header.sop_class_uid,
                    header.transfer_syntax,
                    header.modality,
                    size,
                    now,
                    calling_ae,
                    uid,
                ),
            )
            db.execute(SQL_RESTORE_STUDY, (size - old_size, study_id))
        return True

    def add_conflict(
        self, sop_instance_uid: str, rel_path: str, size: int, now: float, calling_ae: str
    ) -> None:
        with self._transaction() as db:
            db.execute(SQL_INSERT_CONFLICT, (sop_instance_uid, rel_path, size, now, calling_ae))

    def add_quarantine(
        self,
        rel_path: str,
        now: float,
        *,
        calling_ae: str,
        peer_address: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        status: int,
        reason: str,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                SQL_INSERT_QUARANTINE,
                (
                    rel_path,
                    now,
                    calling_ae,
                    peer_address,
                    sop_class_uid,
                    sop_instance_uid,
                    status,
                    reason,
                ),
            )

    # -- study completion ----------------------------------------------------------------

    def due_studies(self, received_before: float) -> list[DueStudy]:
        with self._lock:
            rows = self._db.execute(SQL_DUE_STUDIES, (received_before, SELFTEST_LIKE)).fetchall()
        return [DueStudy(*r) for r in rows]

    def study_total(self, study_uid: str) -> int:
        """Instances held for a study, over all its revisions."""
        with self._lock:
            return int(self._db.execute(SQL_STUDY_TOTAL, (study_uid,)).fetchone()[0])

    def mark_complete(
        self,
        study_id: int,
        now: float,
        expected_count: int | None,
        reason: str = "",
        *,
        quiet_since: float | None = None,
    ) -> bool:
        """Complete a revision unless an instance arrived after `quiet_since` (a late one)."""
        quiet = now if quiet_since is None else quiet_since
        with self._transaction() as db:
            cur = db.execute(SQL_MARK_COMPLETE, (now, expected_count, reason, study_id, quiet))
            return cur.rowcount == 1

    def mark_waiting(self, study_id: int, now: float, expected_count: int, reason: str) -> None:
        with self._transaction() as db:
            db.execute(SQL_MARK_WAITING, (now, expected_count, reason, study_id))

    # -- reading -----------------------------------------------------------------------

    def studies(self, limit: int = 100) -> list[StudyRow]:
        with self._lock:
            rows = self._db.execute(SQL_LIST_STUDIES, (limit,)).fetchall()
        return [StudyRow(*r) for r in rows]

    def study_instances(self, study_id: int) -> list[InstanceRow]:
        with self._lock:
            rows = self._db.execute(SQL_STUDY_INSTANCES, (study_id,)).fetchall()
        return [InstanceRow(*r) for r in rows]

    def patient_of(self, study_uid: str) -> tuple[str, str]:
        """The patient's ID and name as the box holds them for a study ("" when it holds none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT patient_id, patient_name FROM studies WHERE study_uid = ? "
                "ORDER BY revision DESC LIMIT 1",
                (study_uid,),
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else ("", "")

    def senders(self, study_id: int) -> list[tuple[str, int]]:
        """Who sent a study revision's instances: (calling AE title, how many), by AE."""
        with self._lock:
            rows = self._db.execute(
                "SELECT calling_ae, COUNT(*) FROM instances WHERE study_id = ? "
                "GROUP BY calling_ae ORDER BY calling_ae",
                (study_id,),
            ).fetchall()
        return [(str(ae), int(n)) for ae, n in rows]

    def all_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute(SQL_ALL_PATHS)}

    def indexed_among(self, paths: Sequence[str]) -> set[str]:
        """Which of `paths` the index holds (studies not purged): one pass over the paths
        (they have no index of their own), on a connection of its own so that it holds up
        neither writers nor the receive path's lookups (in the exclusive-lock fallback, one
        connection is all there is: under the index's lock)."""
        wanted = set(paths)
        if not wanted:
            return set()

        def among(db: sqlite3.Connection) -> set[str]:
            return {r[0] for r in db.execute(SQL_ALL_PATHS) if r[0] in wanted}

        if self.exclusive:  # a second connection would find the file locked
            with self._lock:
                return among(self._db)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self._timeout)
        try:
            return among(db)
        finally:
            db.close()

    def quarantine(self, limit: int = 100) -> list[QuarantineRow]:
        with self._lock:
            rows = self._db.execute(SQL_LIST_QUARANTINE, (limit,)).fetchall()
        return [QuarantineRow(*r) for r in rows]

    def conflicts(self) -> list[ConflictRow]:
        with self._lock:
            return [ConflictRow(*r) for r in self._db.execute(SQL_LIST_CONFLICTS)]

    # -- uplink --------------------------------------------------------------------------

    def studies_without_code(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(int(r[0]), str(r[1])) for r in self._db.execute(SQL_STUDIES_WITHOUT_CODE)]

    def code_of_study(self, study_uid: str) -> str | None:
        """The code an earlier revision of this study already carries."""
        with self._lock:
            row = self._db.execute(SQL_CODE_OF_STUDY, (study_uid,)).fetchone()
        return None if row is None else str(row[0])

    def part_size(self, study_id: int, default: int) -> int:
        """The study's upload part size: fixed the first time it is asked for."""
        with self._transaction() as db:
            db.execute(SQL_SET_PART_SIZE, (default, study_id))
            return int(db.execute(SQL_GET_PART_SIZE, (study_id,)).fetchone()[0])

    def medis_code(self, study_id: int) -> str | None:
        with self._lock:
            row = self._db.execute(SQL_GET_CODE, (study_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def code_taken(self, code: str) -> bool:
        with self._lock:
            return self._db.execute(SQL_CODE_TAKEN, (code,)).fetchone() is not None

    def set_medis_code(self, study_id: int, code: str) -> bool:
        """Give a complete study revision its code and queue it."""
        with self._transaction() as db:
            return db.execute(SQL_SET_CODE, (code, study_id)).rowcount == 1

    def next_upload(self, now: float) -> UploadStudy | None:
        with self._lock:
            row = self._db.execute(SQL_NEXT_UPLOAD, (now,)).fetchone()
        return None if row is None else self.upload_study(int(row[0]))

    def upload_study(self, study_id: int) -> UploadStudy | None:
        with self._lock:
            row = self._db.execute(SQL_UPLOAD_STUDY, (study_id,)).fetchone()
        return None if row is None else UploadStudy(*row)

    def upload_instances(self, study_id: int) -> list[UploadInstance]:
        """A study revision's instances in stream order (series, then path)."""
        with self._lock:
            rows = self._db.execute(SQL_UPLOAD_INSTANCES, (study_id,)).fetchall()
        return [UploadInstance(*r) for r in rows]

    def set_hashes(self, study_id: int, hashes: dict[str, str], stream_sha256: str) -> None:
        with self._transaction() as db:
            db.executemany(SQL_SET_HASH, [(h, uid) for uid, h in hashes.items()])
            db.execute(SQL_SET_STREAM_HASH, (stream_sha256, study_id))

    def stream_sha256(self, study_id: int) -> str | None:
        with self._lock:
            row = self._db.execute(SQL_GET_STREAM_HASH, (study_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def purgeable(self, delivered_before: float) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._db.execute(SQL_PURGEABLE, (delivered_before,))]

    def remove_selftest(self, calling_ae: str) -> list[str]:
        """Forget the self-test's objects (SELFTEST_UID_PREFIX, sent by `calling_ae`: nothing
        another sender stored under that prefix is touched); their paths, for the spool."""
        with self._transaction() as db:
            found = db.execute(SQL_SELFTEST_PATHS, (SELFTEST_LIKE, calling_ae))
            paths = [str(r[0]) for r in found]
            db.execute(SQL_DELETE_SELFTEST_INSTANCES, (calling_ae, SELFTEST_LIKE))
            db.execute(SQL_DELETE_SELFTEST_STUDIES, (SELFTEST_LIKE,))
        return paths

    def mark_purged(self, study_id: int, now: float) -> None:
        with self._transaction() as db:
            db.execute(SQL_MARK_PURGED, (now, study_id))

    def delivered_and_purged(self, sop_instance_uid: str) -> bool:
        """True when the instance reached the hub and its local copy was removed."""
        with self._lock:
            row = self._db.execute(SQL_STUDY_OF_INSTANCE, (sop_instance_uid,)).fetchone()
        return row is not None and row[0] == DELIVERED and row[1] is not None

    def set_uploading(self, study_id: int, upload_id: str) -> None:
        with self._transaction() as db:
            db.execute(SQL_SET_UPLOADING, (upload_id, study_id))

    def register_afresh(self, study_id: int, revision: int) -> int | None:
        """Give a revision the hub cannot complete (a file lost before the hub held its part)
        the study's next revision number, to be registered and uploaded afresh: the hub keys
        an upload by study and revision, and the old key's stream can no longer be made. Its
        instances are hashed again before the new registration (a copy sent again may differ
        from the lost file). The new number, or None when the row is no longer that revision
        being uploaded."""
        with self._transaction() as db:
            row = db.execute("SELECT study_uid FROM studies WHERE id = ?", (study_id,)).fetchone()
            if row is None:
                return None
            new = int(db.execute(SQL_NEXT_REVISION, (row[0],)).fetchone()[0])
            if db.execute(SQL_REGISTER_AFRESH, (new, study_id, revision)).rowcount != 1:
                return None
            db.execute(SQL_FORGET_HASHES, (study_id,))
        return new

    def conflicts_of(self, sop_instance_uid: str) -> list[ConflictRow]:
        """The copies of an instance kept in conflicts/, the latest first."""
        with self._lock:
            rows = self._db.execute(SQL_CONFLICTS_OF, (sop_instance_uid,)).fetchall()
        return [ConflictRow(*r) for r in rows]

    def forget_conflict(self, conflict_id: int) -> None:
        with self._transaction() as db:
            db.execute(SQL_FORGET_CONFLICT, (conflict_id,))

    def record_failure(self, study_id: int, next_attempt_at: float, error: str) -> None:
        with self._transaction() as db:
            db.execute(SQL_RECORD_FAILURE, (next_attempt_at, error[:500], study_id))

    def mark_delivered(self, study_id: int, receipt_json: str, now: float) -> bool:
        with self._transaction() as db:
            return db.execute(SQL_MARK_DELIVERED, (receipt_json, now, study_id)).rowcount == 1

    # -- node side (downloads, report status) --------------------------------------------

    def holding(self, study_uid: str) -> Holding:
        with self._lock:
            count, receiving, purged = self._db.execute(SQL_STUDY_HOLDING, (study_uid,)).fetchone()
        return Holding(int(count), int(receiving or 0), int(purged or 0))

    def held_instances(self, study_uid: str) -> list[UploadInstance]:
        """Every instance of a study (all revisions) whose file is on the box."""
        with self._lock:
            rows = self._db.execute(SQL_HELD_INSTANCES, (study_uid,)).fetchall()
        return [UploadInstance(*row) for row in rows]

    def report_instances(self, study_uid: str) -> list[ReportInstance]:
        """The study's structured reports and encapsulated PDFs the box received."""
        with self._lock:
            rows = self._db.execute(SQL_REPORT_INSTANCES, (study_uid,)).fetchall()
        return [ReportInstance(str(r[0]), str(r[1]), float(r[2]), bool(r[3])) for r in rows]

    def studies_of_patient(self, patient_id: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(SQL_STUDIES_OF_PATIENT, (patient_id,)).fetchall()
        return [str(r[0]) for r in rows]

    def queue_stats(self, now: float) -> tuple[int, float, int]:
        """Studies not yet delivered: how many, the oldest one's age (s), their bytes."""
        with self._lock:
            count, oldest, size = self._db.execute(SQL_QUEUE_STATS).fetchone()
        return int(count), (now - float(oldest)) if count and oldest else 0.0, int(size)

    # -- the dashboard ----------------------------------------------------------------

    def received_since(self, since: float) -> list[tuple[float, int]]:
        """(received_at, size) of the instances received at or after `since`.

        Rows are read newest first by rowid (insertion order) and the walk stops at the first
        older one, so only the recent rows are read and the hot path keeps one index less."""
        found: list[tuple[float, int]] = []
        with self._lock:
            cursor = self._db.execute(SQL_RECENT_INSTANCES)
            while rows := cursor.fetchmany(512):
                for received_at, size in rows:
                    if received_at < since:
                        cursor.close()
                        return found
                    found.append((float(received_at), int(size)))
        return found

    def delivered_since(self, since: float) -> list[tuple[float, int]]:
        """(delivered_at, bytes) of every study revision delivered at or after `since`."""
        with self._lock:
            rows = self._db.execute(SQL_DELIVERED_SINCE, (since,)).fetchall()
        return [(float(r[0]), int(r[1])) for r in rows]
