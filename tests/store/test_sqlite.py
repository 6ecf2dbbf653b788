"""The index's write-ahead log is reserved once, so per-instance commits do not grow it."""

from __future__ import annotations

from pathlib import Path

from afra.store.index import Index
from afra.store.sqlite import WAL_RESERVE_BYTES


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
