"""The box's SQLite files, opened one way: WAL, synchronous FULL, one connection shared by
threads with writes serialised by a lock (`BEGIN IMMEDIATE` ... `COMMIT`).

The receive path has two more ways in, for several associations at once: `_grouped` lets
writers that arrive while a commit is being flushed share the next transaction and its one
WAL flush (group commit), and `_read_one` reads on a second connection, so a lookup does not
wait behind another thread's flush (WAL readers never wait for the writer). Work that can be
redone from what is durable elsewhere may ask `_grouped` not to wait for the flush
(synchronous NORMAL for that commit; in WAL mode a power cut then undoes only the last such
commits, never a FULL one or anything before it).

A store that commits once per received instance can reserve its write-ahead log: the WAL file
is grown once to a fixed size, so that each commit overwrites blocks the file already has and
its fdatasync flushes data only. A commit that extends the file also waits for a filesystem
journal commit (measured on ext4: 0.30-0.38 ms against 0.16 ms per small commit). SQLite keeps
the file at that size after each checkpoint (no `journal_size_limit`) and removes it when the
last connection closes, so the reservation is made again at the next start. It is skipped
(and logged) when the disk has no room for it: commits then grow the log as they go.

On a disk with no free byte, WAL mode cannot be entered the usual way: SQLite cannot size the
wal-index file (`-shm`: SQLITE_IOERR_SHMSIZE, "disk I/O error" at the file's first access),
and a box that cannot open its files does not start, so can neither say why nor deliver and
purge what frees the disk. A store that the box cannot start without opts in
(`exclusive_fallback`): it then opens the file again with `locking_mode = EXCLUSIVE` set
before the first access, which keeps the wal-index in this process's memory ("Use of WAL
Without Shared-Memory", https://www.sqlite.org/wal.html). The WAL file, its recovery and
synchronous FULL are the same, so nothing is less durable; but the file stays locked by this
connection until it is closed: other processes (`afra studies`, `afra jobs`, the self-test)
wait out their timeout and get "database is locked", and the store reads on its one
connection (behind the write lock) instead of a second one. Commits still need room on the
disk (SQLITE_FULL until there is); once there is, they work again in the same run. Every
opening tries the normal mode first, so the next start with room is back to it.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

LOG = logging.getLogger("afra.store")

T = TypeVar("T")

# The wal-index cannot be opened, sized or mapped: on a full disk, SHMSIZE.
NO_WAL_INDEX = frozenset(
    {sqlite3.SQLITE_IOERR_SHMOPEN, sqlite3.SQLITE_IOERR_SHMSIZE, sqlite3.SQLITE_IOERR_SHMMAP}
)

# SQLite checkpoints after 1000 pages (4 MiB); the reservation covers that with room to spare.
WAL_RESERVE_BYTES = 8 * 1024 * 1024


class _Pending(Generic[T]):
    """One writer's work waiting for a grouped transaction."""

    __slots__ = ("done", "error", "flush", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T], flush: bool) -> None:
        self.work = work
        self.flush = flush
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class SqliteStore:
    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        timeout: float = 5.0,
        reserve_wal: bool = False,
        exclusive_fallback: bool = False,
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: list[_Pending[Any]] = []
        self._pending_lock = threading.Lock()
        # Opened on first use: only the index's receive path reads beside its writer.
        self._reader: sqlite3.Connection | None = None
        self._timeout = timeout
        self._read_lock = threading.Lock()
        # True when the wal-index is in this process's memory (see the module docstring).
        # exclusive_fallback: open that way when the wal-index file cannot be made.
        self.exclusive = False
        # The writer connection's synchronous setting now (see `_grouped`'s flush).
        self._relaxed = False
        self._db = self._connect()
        try:
            self._enter_wal(exclusive_fallback)
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(schema)
            if reserve_wal:
                self._reserve_wal()
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._timeout
        )

    def _enter_wal(self, exclusive_fallback: bool) -> None:
        """WAL mode; with the wal-index in memory when its file cannot be made (a full disk)."""
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not exclusive_fallback or exc.sqlite_errorcode not in NO_WAL_INDEX:
                raise
            reason = exc
        # A fresh connection: the exclusive mode must be set before the file's first access.
        self._db.close()
        self._db = self._connect()
        self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode = WAL")
        self.exclusive = True
        LOG.warning(
            "%s: its wal-index (-shm) cannot be made (%s: %s; is the disk full?): opened in "
            "exclusive locking mode, so no other process (afra studies, afra jobs, the "
            "self-test) can read it until this one closes it; the next start with room on "
            "the disk opens it normally",
            self.path,
            reason.sqlite_errorname,
            reason,
        )

    def _reserve_wal(self) -> None:
        """Grow the WAL to WAL_RESERVE_BYTES (unless it is already that big), then restart it.

        The pages written are those of a scratch table created and dropped in one
        transaction; they end up as free pages of the database, which later rows reuse.
        """
        wal = Path(f"{self.path}-wal")
        try:
            have = wal.stat().st_size
        except FileNotFoundError:
            have = 0
        if have >= WAL_RESERVE_BYTES:
            return
        # The log grows, and the database too unless its free pages (an earlier reservation's)
        # take the scratch pages at the checkpoint.
        free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        needed = WAL_RESERVE_BYTES - have + max(0, WAL_RESERVE_BYTES - free_pages * page_size)
        free = shutil.disk_usage(self.path.parent).free
        if free < needed:
            LOG.warning(
                "%s: no room for the write-ahead log's reservation (%d KiB free, %d KiB "
                "needed): commits grow the log as they go until the next start",
                self.path,
                free // 1024,
                needed // 1024,
            )
            return
        try:
            with self._transaction() as db:
                db.execute("CREATE TABLE wal_reserve (b BLOB)")
                db.execute("INSERT INTO wal_reserve VALUES (zeroblob(?))", (WAL_RESERVE_BYTES,))
                db.execute("DROP TABLE wal_reserve")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            # Someone else took the room meanwhile: rolled back, nothing reserved.
            LOG.warning("%s: the write-ahead log's reservation failed: %s", self.path, exc)
            return
        with self._lock:
            # RESTART: the next commit writes from the start of the (now large) file. Busy
            # (another process is reading) only means the reservation waits for a later start.
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            self._db.close()

    def _read_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """One row of a read on the reader connection: it sees committed data only."""
        if self.exclusive:  # a second connection would find the file locked
            with self._lock:
                return self._db.execute(sql, params).fetchone()
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=self._timeout
                )
            return self._reader.execute(sql, params).fetchone()

    def _grouped(self, work: Callable[[sqlite3.Connection], T], *, flush: bool = True) -> T:
        """Run `work` in a write transaction, sharing it with writers that queue meanwhile.

        Whoever takes the write lock commits everything queued so far in one transaction
        (one WAL flush); each piece of work runs in its own savepoint, so one that raises is
        undone alone and its caller gets the exception. A caller returns only once its work
        is committed (or raises), as with `_transaction`.

        `flush=False`: the work may be committed without waiting for the disk (synchronous
        NORMAL: the WAL is flushed by the next commit that waits for it, or at a checkpoint).
        A power cut may then undo the last such commits, never a later flushed one: only for
        work that can be redone from what is already durable elsewhere. A batch waits for the
        disk if any of its work asked to.
        """
        item: _Pending[T] = _Pending(work, flush)
        with self._pending_lock:
            self._pending.append(item)
        with self._lock:
            if not item.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _synchronous(self, *, relaxed: bool) -> None:
        """The next commit waits for the disk (FULL) or not (NORMAL); under the write lock."""
        if relaxed != self._relaxed:
            self._db.execute(f"PRAGMA synchronous = {'NORMAL' if relaxed else 'FULL'}")
            self._relaxed = relaxed

    def _commit_batch(self, batch: list[_Pending[Any]]) -> None:
        db = self._db
        try:
            self._synchronous(relaxed=not any(item.flush for item in batch))
            db.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:
                # Alone in its transaction, the work needs no savepoint: if it raises, the
                # whole transaction is rolled back below and its caller gets the exception.
                batch[0].result = batch[0].work(db)
                db.execute("COMMIT")
                return
            for item in batch:
                db.execute("SAVEPOINT item")
                try:
                    item.result = item.work(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO item")
                    item.error = exc
                db.execute("RELEASE item")
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            finally:
                # Also when the ROLLBACK fails (a failing disk): nobody in the batch may take
                # its work for committed.
                for item in batch:
                    if item.error is None:
                        item.error = exc
                        item.result = None
        finally:
            for item in batch:
                item.done = True

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._synchronous(relaxed=False)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
