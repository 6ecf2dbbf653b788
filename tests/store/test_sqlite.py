"""The index's write-ahead log is reserved once, so per-instance commits do not grow it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from afra.store.index import Index
from afra.store.sqlite import WAL_RESERVE_BYTES, _Pending
from tests.conftest import wait_for


def _tables(index: Index) -> list[str]:
    rows = index._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return sorted(str(r[0]) for r in rows)


def test_running_box_reserves_the_wal_once(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    wal = Path(f"{path}-wal")
    plain = Index(path)
    assert not wal.exists() or wal.stat().st_size < WAL_RESERVE_BYTES  # CLI opens: none
    plain.close()

    first = Index(path, reserve_wal=True)
    assert wal.stat().st_size >= WAL_RESERVE_BYTES
    assert "wal_reserve" not in _tables(first)
    db_size = path.stat().st_size
    # A second opener (a CLI command beside the running box) finds it reserved: no new pages.
    second = Index(path, reserve_wal=True)
    assert path.stat().st_size == db_size
    # Commits after the reservation overwrite the log from its start instead of extending it.
    size_before = wal.stat().st_size
    for n in range(50):
        with first._transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{n}", "v"))
    assert wal.stat().st_size == size_before
    assert second._db.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0] == 50
    second.close()
    first.close()


def test_writers_at_the_same_moment_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    first_running = threading.Event()
    release_first = threading.Event()
    ran_on: dict[str, int] = {}
    results: dict[str, object] = {}

    def insert(key: str, *, fail: bool = False, hold: bool = False) -> threading.Thread:
        def work(db: sqlite3.Connection) -> str:
            ran_on[key] = threading.get_ident()
            db.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
            if hold:
                first_running.set()
                release_first.wait(10)
            if fail:
                db.execute("INSERT INTO meta (key, value) VALUES (?, 'again')", (key,))
            return key

        def run() -> None:
            try:
                results[key] = index._grouped(work)
            except sqlite3.IntegrityError as exc:
                results[key] = exc

        return threading.Thread(target=run)

    first = insert("a", hold=True)
    first.start()
    assert first_running.wait(10)
    # Three more writers arrive while "a" holds the write transaction open.
    others = [insert("b"), insert("c", fail=True), insert("d")]
    for t in others:
        t.start()
    while len(index._pending) < 3:
        threading.Event().wait(0.01)
    release_first.set()
    for t in [first, *others]:
        t.join(10)

    assert results["a"] == "a" and results["b"] == "b" and results["d"] == "d"
    assert isinstance(results["c"], sqlite3.IntegrityError)  # only its own work undone
    # b, c and d were committed together, by whichever of them took the lock first.
    assert ran_on["b"] == ran_on["c"] == ran_on["d"] != ran_on["a"]
    keys = index._read_one("SELECT group_concat(key) FROM meta WHERE value = 'v'", ())[0]
    assert sorted(keys.split(",")) == ["a", "b", "d"]
    index.close()


def test_a_writer_alone_that_fails_leaves_nothing_and_the_next_one_commits(
    tmp_path: Path,
) -> None:
    index = Index(tmp_path / "index.sqlite")

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('lone', 'v')")
        db.execute("INSERT INTO meta (key, value) VALUES ('lone', 'again')")

    with pytest.raises(sqlite3.IntegrityError):
        index._grouped(half_then_fail)
    assert not index._db.in_transaction
    assert index._read_one("SELECT count(*) FROM meta WHERE key = 'lone'", ())[0] == 0

    def ok(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO meta (key, value) VALUES ('next', 'v')")
        return "next"

    assert index._grouped(ok) == "next"
    assert index._read_one("SELECT count(*) FROM meta WHERE key = 'next'", ())[0] == 1
    index.close()


class _FailingEnd:
    """The index's connection on a failing disk: COMMIT and then ROLLBACK refused."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql in ("COMMIT", "ROLLBACK"):
            raise sqlite3.OperationalError(f"disk I/O error ({sql})")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_batch_whose_commit_and_rollback_fail_commits_nobody(tmp_path: Path) -> None:
    """With the ROLLBACK refused too, every writer of the batch still gets the error: none may
    take its work for committed (a received instance would be answered stored without its
    row)."""
    index = Index(tmp_path / "index.sqlite")

    def insert(key: str) -> _Pending[str]:
        def work(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
            return key

        return _Pending(work, True)

    batch = [insert("a"), insert("b")]
    real = index._db
    index._db = _FailingEnd(real)  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError):
            index._commit_batch(batch)
    finally:
        index._db = real
    assert [(item.result, type(item.error)) for item in batch] == [
        (None, sqlite3.OperationalError),
        (None, sqlite3.OperationalError),
    ]
    real.rollback()
    assert index._read_one("SELECT count(*) FROM meta WHERE value = 'v'", ())[0] == 0
    index.close()


def _synchronous(db: sqlite3.Connection) -> int:
    """The synchronous level the transaction will commit at: 1 NORMAL, 2 FULL."""
    return int(db.execute("PRAGMA synchronous").fetchone()[0])


def test_only_work_that_can_be_redone_commits_without_waiting_for_the_disk(
    tmp_path: Path,
) -> None:
    index = Index(tmp_path / "index.sqlite")
    assert index._grouped(_synchronous, flush=False) == 1
    # Everything else still waits for the disk, on the same connection, right after.
    with index._transaction() as db:
        assert _synchronous(db) == 2
    assert index._grouped(_synchronous) == 2
    # A batch waits for the disk when any of its writers asked to: the two commit together.
    release = threading.Event()
    holding = threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        holding.set()
        release.wait(10)

    seen: dict[str, int] = {}
    ran_on: dict[str, int] = {}

    def writer(key: str, flush: bool) -> threading.Thread:
        def work(db: sqlite3.Connection) -> None:
            ran_on[key] = threading.get_ident()
            seen[key] = _synchronous(db)

        return threading.Thread(target=lambda: index._grouped(work, flush=flush))

    first = threading.Thread(target=lambda: index._grouped(hold, flush=False))
    first.start()
    assert holding.wait(10)
    both = [writer("relaxed", False), writer("durable", True)]
    for t in both:
        t.start()
    wait_for(lambda: len(index._pending) == 2, timeout=10, what="both writers queued")
    release.set()
    for t in [first, *both]:
        t.join(10)
    assert ran_on["relaxed"] == ran_on["durable"]
    assert seen == {"relaxed": 2, "durable": 2}
    index.close()
