"""An instance's index row refused after its file is under its name (docs/conformance.md,
"Duplicates and conflicts"): the name never stays unindexed, and nothing left on the disk by
such a refusal stops the next start."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from afra.app import build_appliance
from afra.dicom import spool as spool_module
from afra.errors import StorageError
from afra.store.index import Index, StoredInstance
from tests.conftest import BoxFactory, make_config
from tests.dicom.conftest import LOOPBACK, store_one
from tests.dicomgen import make_instance

UID = "1.2.826.0.1.3680043.10.1234.5"


@contextmanager
def _running(data: Path, clock: Any) -> Iterator[Any]:
    box = build_appliance(make_config(data), clock=clock)
    box.start()
    try:
        yield box
    finally:
        box.close()


def _objects(box: Any) -> list[Path]:
    return sorted((box.spool.root / "objects").rglob("*.dcm"))


def _first_lookup_misses(box: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examination's lookup finds nothing, as when another process has linked the same
    UID under another study and not yet committed its row; later lookups are the index's."""
    real_find = box.index.find_instance
    calls: list[str] = []

    def find(uid: str) -> StoredInstance | None:
        calls.append(uid)
        return None if len(calls) == 1 else real_find(uid)

    monkeypatch.setattr(box.index, "find_instance", find)


def test_a_uid_another_process_indexed_under_another_study_is_a_conflict(
    tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two modalities disagree about the study of one SOP Instance UID and two processes store
    both at once: the two names differ, so both links succeed, and the second row breaks the
    index's key. That copy is kept in conflicts/, as a copy sent later would be, and answered
    stored; the study keeps the first. Before, it was answered 0xA700 and its file stayed in
    objects/ unindexed, and the next start failed on it (a boot loop)."""
    data = tmp_path / "box"
    first = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    second = make_instance(tmp_path / "b.dcm", sop_instance_uid=UID, study_uid="1.2.3.2")
    with _running(data, clock) as box:
        assert store_one(box.dicom.port, first) == 0x0000
        _first_lookup_misses(box, monkeypatch)
        assert store_one(box.dicom.port, second) == 0x0000
        held = box.index.find_instance(UID)
        assert held is not None and held.path == box.spool.instance_path("1.2.3.1", UID)
        assert [box.spool.root / held.path] == _objects(box)  # no second name in objects/
        (conflict,) = box.index.conflicts()
        assert conflict.sop_instance_uid == UID
        assert dcmread(box.spool.absolute(conflict.path)).StudyInstanceUID == "1.2.3.2"
        assert [s.study_uid for s in box.index.studies()] == ["1.2.3.1"]
    with _running(data, clock) as again:
        assert again.startup.indexed_orphans == 0 and again.startup.unreadable_orphans == 0


def test_an_index_row_that_fails_takes_the_name_away(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index refuses the row (a full or failing disk under the database): the sender is
    told 0xA700 and the file does not stay under its name, so the next start does not index
    and upload what was refused, and the copy sent again is stored at once."""
    box = make_box()
    path = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    real_add = box.index.add_instance
    failures: list[str] = []

    def add(header: Any, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(header.sop_instance_uid)
            raise sqlite3.OperationalError("disk I/O error")
        return real_add(header, *args, **kwargs)

    monkeypatch.setattr(box.index, "add_instance", add)
    assert store_one(box.dicom.port, path) == 0xA700
    assert failures == [UID]
    assert _objects(box) == []
    assert box.index.find_instance(UID) is None
    assert store_one(box.dicom.port, path) == 0x0000
    held = box.index.find_instance(UID)
    assert held is not None and [box.spool.root / held.path] == _objects(box)
    assert box.index.studies()[0].instance_count == 1


def test_start_up_keeps_an_unindexed_file_whose_uid_is_held_elsewhere_as_a_conflict(
    make_box: BoxFactory, tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the race above left before this was mended (or a crash between two processes'
    links and rows): a file in objects/, unindexed, whose UID the index holds under another
    study. The start goes on; the file goes to conflicts/, listed for review."""
    data = tmp_path / "box"
    first = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    with _running(data, clock) as box:
        assert store_one(box.dicom.port, first) == 0x0000
    other = make_box(tmp_path / "other")
    second = make_instance(tmp_path / "b.dcm", sop_instance_uid=UID, study_uid="1.2.3.2")
    assert store_one(other.dicom.port, second) == 0x0000
    rel = box.spool.instance_path("1.2.3.2", UID)
    stray = box.spool.absolute(rel)
    box.spool.ensure_dir(stray.parent)
    stray.write_bytes(other.spool.absolute(rel).read_bytes())
    flushed: list[Path] = []
    real_dir = spool_module.fsync_dir
    monkeypatch.setattr(
        spool_module, "fsync_dir", lambda p: (flushed.append(Path(p)), real_dir(p))[1]
    )
    with _running(data, clock) as again:
        assert again.startup.conflicting_orphans == 1
        assert again.startup.indexed_orphans == 0 and again.startup.unreadable_orphans == 0
        assert not stray.exists() and stray.parent in flushed  # the move is durable
        (conflict,) = again.index.conflicts()
        assert dcmread(again.spool.absolute(conflict.path)).StudyInstanceUID == "1.2.3.2"
        held = again.index.find_instance(UID)
        assert held is not None and held.path == again.spool.instance_path("1.2.3.1", UID)
        assert again.dicom.port  # it is up and listening


def test_start_up_goes_on_when_one_file_cannot_be_indexed(
    tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the index says to one file found at start-up, the others are indexed and the
    box starts; that file stays where it is, counted and logged for review."""
    data = tmp_path / "box"
    paths = [
        make_instance(tmp_path / f"{n}.dcm", sop_instance_uid=f"{UID}.{n}", study_uid="1.2.3.1")
        for n in range(3)
    ]
    with _running(data, clock) as box:
        for path in paths:
            assert store_one(box.dicom.port, path) == 0x0000
    for p in data.glob("index.sqlite*"):
        p.unlink()
    real_add = Index.add_instance

    def add(self: Index, header: Any, *args: Any, **kwargs: Any) -> Any:
        if header.sop_instance_uid == f"{UID}.1":
            raise sqlite3.IntegrityError("UNIQUE constraint failed: instances.sop_instance_uid")
        return real_add(self, header, *args, **kwargs)

    monkeypatch.setattr(Index, "add_instance", add)
    with _running(data, clock) as again:
        assert (again.startup.indexed_orphans, again.startup.unreadable_orphans) == (2, 1)
        assert again.index.find_instance(f"{UID}.1") is None
        assert len(_objects(again)) == 3


@pytest.mark.parametrize(("max_pdu", "echoed"), [(6, False), (1, False), (7, True), (0, True)])
def test_a_peer_whose_pdus_cannot_carry_an_answer_is_rejected(
    box: Any, max_pdu: int, echoed: bool
) -> None:
    """A Maximum Length Received of 1-6 bytes leaves no room for one byte of a PDV: rejected at
    negotiation (before, 6 raised inside the association and 1-5 sent an empty command set).
    7 gets its answer a byte per PDU; 0 means no limit."""
    ae = AE(ae_title="TINY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA", max_pdu=max_pdu)
    if not echoed:
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (1, 1)
        return
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_a_row_recorded_though_its_call_failed_is_stored(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main process committed the row and its answer was lost on the way to the worker:
    the row and the file are there, so the instance is stored and answered so."""
    box = make_box()
    path = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    real_add = box.index.add_instance

    def add(*args: Any, **kwargs: Any) -> Any:
        real_add(*args, **kwargs)
        raise StorageError("the main process is gone")

    monkeypatch.setattr(box.index, "add_instance", add)
    assert store_one(box.dicom.port, path) == 0x0000
    held = box.index.find_instance(UID)
    assert held is not None and [box.spool.root / held.path] == _objects(box)


def test_a_call_without_an_answer_leaves_the_file_for_its_commit(
    tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer and no row yet (a worker whose main process is stopping may still see its
    row committed a moment later): 0xA700, and the file stays under its name; taking it away
    could leave that row over a missing file. The next start indexes it."""
    data = tmp_path / "box"
    path = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    with _running(data, clock) as box:

        def add(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("the main process is gone")

        monkeypatch.setattr(box.index, "add_instance", add)
        assert store_one(box.dicom.port, path) == 0xA700
        assert box.index.find_instance(UID) is None
        assert len(_objects(box)) == 1
    with _running(data, clock) as again:
        assert again.startup.indexed_orphans == 1
        held = again.index.find_instance(UID)
        assert held is not None and [again.spool.root / held.path] == _objects(again)


def test_a_conflict_that_cannot_be_kept_leaves_no_name(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UID was indexed under another study meanwhile, and conflicts/ cannot take this
    copy (a full disk): 0xA700, and its name in objects/ goes, so nothing of it is left to
    meet the held UID at the next start."""
    box = make_box()
    first = make_instance(tmp_path / "a.dcm", sop_instance_uid=UID, study_uid="1.2.3.1")
    second = make_instance(tmp_path / "b.dcm", sop_instance_uid=UID, study_uid="1.2.3.2")
    assert store_one(box.dicom.port, first) == 0x0000
    _first_lookup_misses(box, monkeypatch)

    def keep_conflict(*args: Any, **kwargs: Any) -> str:
        raise StorageError("cannot make conflicts/x.dcm durable: No space left on device")

    monkeypatch.setattr(box.spool, "keep_conflict", keep_conflict)
    assert store_one(box.dicom.port, second) == 0xA700
    held = box.index.find_instance(UID)
    assert held is not None and [box.spool.root / held.path] == _objects(box)
    assert box.index.conflicts() == []


def test_rejected_tiny_pdu_peers_hold_no_association(make_box: BoxFactory) -> None:
    """The rejection comes before the association is counted: more rejected peers than
    dicom.max_associations still leave room for the next one."""
    box = make_box(dicom={"max_associations": 2})
    for _ in range(3):
        ae = AE(ae_title="TINY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assert ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA", max_pdu=6).is_rejected
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
