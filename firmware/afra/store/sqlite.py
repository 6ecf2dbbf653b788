"""The box's SQLite files, opened one way: WAL, synchronous FULL, one connection shared by
threads with writes serialised by a lock (`BEGIN IMMEDIATE` ... `COMMIT`).

The receive path has two more ways in, for several associations at once: `_grouped` lets
writers that arrive while a commit is being flushed share the next transaction and its one
WAL flush (group commit), and `_read_one` reads on a second connection, so a lookup does not
wait behind another thread's flush (WAL readers never wait for the writer).

A store that commits once per received instance can reserve its write-ahead log: the WAL file
is grown once to a fixed size, so that each commit overwrites blocks the file already has and
its fdatasync flushes data only. A commit that extends the file also waits for a filesystem
journal commit (measured on ext4: 0.30-0.38 ms against 0.16 ms per small commit). SQLite keeps
the file at that size after each checkpoint (no `journal_size_limit`) and removes it when the
last connection closes, so the reservation is made again at the next start.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# SQLite checkpoints after 1000 pages (4 MiB); the reservation covers that with room to spare.
WAL_RESERVE_BYTES = 8 * 1024 * 1024


class _Pending(Generic[T]):
    """One writer's work waiting for a grouped transaction."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class SqliteStore:
    def __init__(
        self, path: Path, schema: str, *, timeout: float = 5.0, reserve_wal: bool = False
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=timeout
        )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._pending: list[_Pending[Any]] = []
        self._pending_lock = threading.Lock()
        # Opened on first use: only the index's receive path reads beside its writer.
        self._reader: sqlite3.Connection | None = None
        self._timeout = timeout
        self._read_lock = threading.Lock()
        self._db.executescript(schema)
        if reserve_wal:
            self._reserve_wal()

    def _reserve_wal(self) -> None:
        """Grow the WAL to WAL_RESERVE_BYTES (unless it is already that big), then restart it.

        The pages written are those of a scratch table created and dropped in one
        transaction; they end up as free pages of the database, which later rows reuse.
        """
        wal = Path(f"{self.path}-wal")
        try:
            if wal.stat().st_size >= WAL_RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        with self._transaction() as db:
            db.execute("CREATE TABLE wal_reserve (b BLOB)")
            db.execute("INSERT INTO wal_reserve VALUES (zeroblob(?))", (WAL_RESERVE_BYTES,))
            db.execute("DROP TABLE wal_reserve")
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
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=self._timeout
                )
            return self._reader.execute(sql, params).fetchone()

    def _grouped(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a write transaction, sharing it with writers that queue meanwhile.

        Whoever takes the write lock commits everything queued so far in one transaction
        (one WAL flush); each piece of work runs in its own savepoint, so one that raises is
        undone alone and its caller gets the exception. A caller returns only once its work
        is committed (or raises), as with `_transaction`.
        """
        item: _Pending[T] = _Pending(work)
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

    def _commit_batch(self, batch: list[_Pending[Any]]) -> None:
        db = self._db
        try:
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
            if db.in_transaction:
                db.execute("ROLLBACK")
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
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
