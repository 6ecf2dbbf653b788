"""A copy sent again of an instance whose file had gone from the device (docs/conformance.md,
"Files start-up leaves for review"): put back in its study once, durable before its name, and
never answered for by another store before it is."""

from __future__ import annotations

import errno
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from afra.app import Appliance
from afra.dicom import receive as receive_module
from afra.dicom import spool as spool_module
from afra.dicom.receive import Receiver, StoreRequest
from afra.dicom.spool import Spool
from tests.conftest import BoxFactory
from tests.dicom.conftest import LOOPBACK
from tests.dicomgen import make_ct_series, make_instance

OUT_OF_RESOURCES = 0xA700
CT = "1.2.840.10008.5.1.4.1.1.2"


def _one(tmp_path: Path) -> tuple[Path, Any]:
    (path,) = make_ct_series(tmp_path / "ct", n=1, rows=32, cols=32)
    return path, dcmread(path, stop_before_pixels=True)


def _store(box: Appliance, path: Path, name: str, receiver: Receiver | None = None) -> int:
    """A received copy of `path` handed to the receiver, as the acceptor does at its end."""
    ds = dcmread(path, stop_before_pixels=True)
    tmp = box.spool.tmp_dir / name
    shutil.copyfile(path, tmp)
    request = StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, ds.SOPClassUID, "M", "127.0.0.1")
    return (receiver or box.receiver).store(tmp, request)


def _gone(box: Appliance, tmp_path: Path) -> tuple[Path, Path]:
    """An instance stored and indexed, then its file gone from the device."""
    path, ds = _one(tmp_path)
    assert _store(box, path, "first") == 0x0000
    named = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
    named.unlink()
    return path, named


@pytest.mark.parametrize("one_flush", [True, False], ids=["journaled ext4", "elsewhere"])
def test_the_copy_is_flushed_before_its_name_exists(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_flush: bool
) -> None:
    """The row is there already: a store elsewhere that finds the name compares against it,
    so the file is durable before the link on every filesystem, then its folder."""
    box = make_box(one_flush=lambda _tmp: one_flush)
    assert box.spool.one_flush is one_flush
    path, named = _gone(box, tmp_path)
    flushes: list[str] = []
    real_fsync, real_dir = Spool.fsync_received, spool_module.fsync_dir

    def fsync(file: Path, fd: int | None) -> None:
        flushes.append("file, named" if named.exists() else "file")
        real_fsync(file, fd)

    def fsync_dir(folder: Path) -> None:
        if Path(folder) == named.parent:
            flushes.append("folder, named" if named.exists() else "folder")
        real_dir(folder)

    monkeypatch.setattr(Spool, "fsync_received", staticmethod(fsync))
    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    assert _store(box, path, "again") == 0x0000
    assert flushes == ["file", "folder, named"]
    assert named.exists()


def test_another_store_waits_for_the_restore_and_answers_nothing_it_then_loses(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (two receivers: their UID locks are their own) get the same copy while
    its file is gone. The first has linked its copy when the second looks, and then the
    device refuses the first's folder flush, so the name goes again: the second must not
    have answered stored for it (found by review: it did)."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    box = make_box()
    path, named = _gone(box, tmp_path)
    second = Receiver(box.spool, box.index, min_free_bytes=0, clock=box.clock)
    answers: dict[str, int] = {}
    real_dir = spool_module.fsync_dir

    def refused_after_the_link(folder: Path) -> None:
        if Path(folder) == named.parent and named.exists() and "second" not in answers:
            answers["second"] = _store(box, path, "second", second)
            raise OSError(errno.EIO, "Input/output error")
        real_dir(folder)

    monkeypatch.setattr(spool_module, "fsync_dir", refused_after_the_link)
    answers["first"] = _store(box, path, "first-again")
    assert answers == {"second": OUT_OF_RESOURCES, "first": OUT_OF_RESOURCES}
    assert not named.exists()  # the first took it away again: nobody was told stored
    monkeypatch.undo()
    assert _store(box, path, "third", second) == 0x0000  # sent again later: put back
    assert named.exists()


def test_the_row_takes_the_copy_before_its_name_exists(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uplink may hash the study at any moment: while the row still has the lost copy's
    size, no file may be under the name, or the hash of this copy would be paired with that
    size and the upload refused for ever (found by review)."""
    box = make_box()
    path, named = _gone(box, tmp_path)
    real = box.index.restore_instance
    seen: list[bool] = []

    def restore(*args: Any, **kwargs: Any) -> bool:
        seen.append(named.exists())
        return real(*args, **kwargs)

    monkeypatch.setattr(box.index, "restore_instance", restore)
    assert _store(box, path, "again") == 0x0000
    assert seen == [False]
    found = box.index.find_instance(dcmread(path).SOPInstanceUID)
    assert found is not None and found.size == named.stat().st_size


def test_a_study_folder_removed_while_running_is_made_again(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    """Someone removed a study's folder while the box ran: its copies sent again restore it
    (the spool had it as made and used to refuse every one, 0xA700, with the box failed)."""
    box = make_box()
    path, named = _gone(box, tmp_path)
    shutil.rmtree(named.parent)
    study = dcmread(path, stop_before_pixels=True).StudyInstanceUID
    later = make_instance(tmp_path / "later.dcm", sop_instance_uid="1.2.3.95", study_uid=study)
    assert _store(box, later, "later") == 0x0000  # a new object of that study
    assert _store(box, path, "again") == 0x0000  # and the lost one
    assert named.exists() and box.spool.absolute(box.index.find_instance("1.2.3.95").path).exists()  # type: ignore[union-attr]
    assert box.health.state != "failed"


def test_a_study_purged_meanwhile_gets_nothing_back(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its study delivered and kept, then purged between the look and the restore: the copy
    is not put back in a purged study, where retention would never remove it."""
    box = make_box()
    path, named = _gone(box, tmp_path)
    [study] = box.index.studies()
    assert box.index.mark_complete(study.id, box.clock.time(), None)
    assert box.index.set_medis_code(study.id, "ABCDEFGHJKMN")  # queued
    assert box.index.mark_delivered(study.id, "{}", box.clock.time())  # the hub held it
    real = box.index.restore_instance

    def purged_first(*args: Any, **kwargs: Any) -> bool:
        box.index.mark_purged(study.id, box.clock.time())
        return real(*args, **kwargs)

    monkeypatch.setattr(box.index, "restore_instance", purged_first)
    assert _store(box, path, "again") == OUT_OF_RESOURCES
    assert not named.exists()
    monkeypatch.undo()
    assert _store(box, path, "later") == 0x0000  # reached the hub: nothing to keep
    assert not named.exists()


def test_a_purge_between_the_row_and_the_link_leaves_no_file_behind(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention purges the delivered study after the restore's row and before its link (the
    purge found no file to remove): the copy does not stay on the device, unindexed, until
    the next start (found by review)."""
    box = make_box()
    path, named = _gone(box, tmp_path)
    [study] = box.index.studies()
    assert box.index.mark_complete(study.id, box.clock.time(), None)
    assert box.index.set_medis_code(study.id, "ABCDEFGHJKMN")
    assert box.index.mark_delivered(study.id, "{}", box.clock.time())
    real = box.spool.commit

    def purged_first(*args: Any, **kwargs: Any) -> None:
        box.index.mark_purged(study.id, box.clock.time())
        real(*args, **kwargs)

    monkeypatch.setattr(box.spool, "commit", purged_first)
    assert _store(box, path, "again") == 0x0000  # the hub has it
    assert not named.exists()


def test_four_senders_restoring_one_study_at_once_leave_every_row_true(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    """A third of a study's files gone, then four PACS nodes (AE titles of four lengths, so
    four sizes of each file) send it again at once, over two receiving processes. One
    restore per study at a time, across processes (the study folder's lock): every copy is
    answered stored, each file back once, and each row's size is its file's (found by
    review: without the lock a row took one copy's size and the name another's)."""
    box = make_box(dicom={"receive_processes": 2})
    files = make_ct_series(tmp_path / "ct", n=60, rows=64, cols=64)
    sets = [dcmread(f) for f in files]
    assert _send(box.dicom.port, "FIRST", sets) == [0x0000] * 60
    for ds in sets[::3]:
        box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)).unlink()
    answers: dict[str, list[int]] = {}
    senders = [
        threading.Thread(target=lambda a=aet: answers.setdefault(a, _send(box.dicom.port, a, sets)))
        for aet in ("P", "PACS22", "PACSPACS333", "LONGPACSNAME4")
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    assert all(got == [0x0000] * 60 for got in answers.values()), answers
    total = 0
    for ds in sets:
        row = box.index.find_instance(ds.SOPInstanceUID)
        assert row is not None
        assert box.spool.absolute(row.path).stat().st_size == row.size
        total += row.size
    assert box.index.studies()[0].bytes == total
    assert box.index.conflicts() == []  # the same data sets: duplicates, kept once


def _send(port: int, aet: str, sets: list[Any]) -> list[int]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CT)
    ae.dimse_timeout = 60
    assoc = ae.associate(LOOPBACK, port, ae_title="AFRA")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in sets]
    finally:
        assoc.release()
