"""The study lifecycle as data (store/lifecycle.py) and the schema that holds it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from afra.store import index as index_module
from afra.store.index import Index
from afra.store.lifecycle import TRANSITIONS, StudyState, move, where
from tests.disks import fill, tmpfs


def _v2_database(path: Path) -> None:
    """A database as a box of the previous release left it: schema version 2, one study
    revision in each state (one purged), each with an instance."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")  # as every box database is
    db.executescript(index_module.SCHEMA)
    for statement in index_module.MIGRATIONS[2]:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    for n, state in enumerate(StudyState):
        purged = 5.0 if state is StudyState.DELIVERED else None
        db.execute(
            "INSERT INTO studies (id, study_uid, revision, state, first_received_at, "
            "last_received_at, medis_code, purged_at) VALUES (?, ?, 0, ?, 1, 2, ?, ?)",
            (n + 1, f"1.2.3.{n}", state.value, f"CODE{n}", purged),
        )
        db.execute(
            "INSERT INTO instances (sop_instance_uid, study_id, series_uid, sop_class_uid, "
            "transfer_syntax, path, size, received_at) VALUES (?, ?, '1.9', '1.2', '1.2.840."
            "10008.1.2.1', ?, 10, 1)",
            (f"1.2.3.{n}.1", n + 1, f"objects/{n}.dcm"),
        )
    db.commit()
    db.close()


def test_a_box_updated_from_schema_2_keeps_every_study_and_gains_the_checks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite"
    _v2_database(path)
    index = Index(path)
    try:
        states = [(s.study_uid, s.state, s.medis_code) for s in index.studies()]
        assert sorted(states) == [
            (f"1.2.3.{n}", st.value, f"CODE{n}") for n, st in enumerate(StudyState)
        ]
        assert index.delivered_and_purged("1.2.3.4.1")  # the purged one is still purged
        db = sqlite3.connect(path)
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone() == (5,)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE studies SET state = 'sent' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE studies SET purged_at = 9 WHERE state = 'queued'")
        db.close()
    finally:
        index.close()


def test_on_a_full_disk_the_index_opens_and_migrates_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A box updated while its card is full must still start (to deliver and purge): the
    # rebuild of migration 3 waits for room, the index works at schema 2 meanwhile.
    with tmpfs(tmp_path / "disk", 16) as disk:
        path = disk / "index.sqlite"
        _v2_database(path)
        filler = fill(disk)
        index = Index(path)
        try:
            assert len(index.studies()) == len(StudyState)
        finally:
            index.close()
        assert "stays at schema version 2" in caplog.text
        filler.unlink()  # room again: the next start migrates
        db = sqlite3.connect(path)
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "2",
        )
        db.close()
        Index(path).close()
        db = sqlite3.connect(path)
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )
        db.close()


def test_a_new_index_has_the_checks_too(tmp_path: Path) -> None:
    Index(tmp_path / "index.sqlite").close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(
            "INSERT INTO studies (study_uid, revision, state, first_received_at, "
            "last_received_at) VALUES ('1.2', 0, 'lost', 1, 1)"
        )


def test_every_state_has_its_moves_and_no_other_move_is_written() -> None:
    assert set(TRANSITIONS) == set(StudyState)
    assert move((StudyState.RECEIVED,), StudyState.COMPLETE) == (
        "state = 'complete'",
        "state = 'received'",
    )
    with pytest.raises(ValueError, match="from delivered to received"):
        move((StudyState.DELIVERED,), StudyState.RECEIVED)
    with pytest.raises(ValueError, match="from received to queued"):
        move((StudyState.RECEIVED,), StudyState.QUEUED)  # a code only for a complete study
    assert where(StudyState.QUEUED, StudyState.UPLOADING) == "state IN ('queued', 'uploading')"
    with pytest.raises(ValueError):
        where("delivered")  # type: ignore[arg-type]  # a bare string is not a state


@pytest.mark.parametrize("state", [s for s in StudyState if s is not StudyState.UPLOADING])
def test_only_a_revision_being_uploaded_is_registered_afresh(
    tmp_path: Path, state: StudyState
) -> None:
    """uplink/lost.py's way out for a revision the hub cannot complete: only one being
    uploaded has an old key at the hub to leave (a revision not registered yet has none, a
    delivered one is the hub's), and only under the number the uplink read. The new number
    is above every revision of the study, and what the hub was told is forgotten."""
    path = tmp_path / "index.sqlite"
    index = Index(path)
    db = sqlite3.connect(path)
    try:
        for sid, revision, st in ((1, 0, state.value), (2, 1, "received")):
            db.execute(
                "INSERT INTO studies (id, study_uid, revision, state, first_received_at, "
                "last_received_at, medis_code, upload_id, stream_sha256, part_size) "
                "VALUES (?, '1.2.3', ?, ?, 1, 2, 'CODE', 'U0', 'H', 2097152)",
                (sid, revision, st),
            )
            db.execute(
                "INSERT INTO instances (sop_instance_uid, study_id, series_uid, sop_class_uid, "
                "transfer_syntax, path, size, received_at, sha256) VALUES (?, ?, '1.9', '1.2', "
                "'1.2.840.10008.1.2.1', ?, 10, 1, 'h')",
                (f"1.2.3.{sid}", sid, f"objects/{sid}.dcm"),
            )
        db.commit()
        assert index.register_afresh(1, 0) is None
        db.execute("UPDATE studies SET state = 'uploading' WHERE id = 1")
        db.commit()
        assert index.register_afresh(1, 1) is None  # not the number the uplink read
        unchanged = db.execute("SELECT sha256 FROM instances ORDER BY study_id").fetchall()
        assert unchanged == [("h",), ("h",)]  # a refusal forgets nothing
        assert index.register_afresh(1, 0) == 2
        assert db.execute(
            "SELECT revision, state, upload_id, stream_sha256, part_size, medis_code "
            "FROM studies WHERE id = 1"
        ).fetchone() == (2, "queued", None, None, None, "CODE")
        hashes = db.execute("SELECT study_id, sha256 FROM instances ORDER BY study_id").fetchall()
        assert hashes == [(1, None), (2, "h")]  # the other revision keeps its own
    finally:
        db.close()
        index.close()
