"""One flush per received object on a journaled ext4 (docs/ARCHITECTURE.md, "One flush per
instance on a journaled ext4"): the file is linked under its name first, then one fsync of
the file commits the journal transaction that holds both. Elsewhere POSIX's order stays:
fsync the file, link, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.dicom import spool as spool_module
from afra.dicom.spool import Spool, journal_commits_names
from tests.conftest import BoxFactory
from tests.dicom.conftest import LOOPBACK
from tests.dicomgen import dataset_bytes_hash, make_ct_series
from tests.disks import tmpfs
from tests.peers import storescu

# -- which filesystems count as journaled ---------------------------------------------------


def fake_sys(root: Path, directory: Path, journal_task: str | None) -> Path:
    """A /sys that reports `directory`'s device as an ext4 whose journal_task reads
    `journal_task` (None: no ext4 is mounted from it)."""
    dev = os.stat(directory).st_dev
    device = root / "devices" / "virtual" / "block" / "sdz"
    device.mkdir(parents=True)
    links = root / "dev" / "block"
    links.mkdir(parents=True)
    (links / f"{os.major(dev)}:{os.minor(dev)}").symlink_to(device)
    if journal_task is not None:
        ext4 = root / "fs" / "ext4" / "sdz"
        ext4.mkdir(parents=True)
        (ext4 / "journal_task").write_text(journal_task)
    return root


@pytest.mark.parametrize(
    ("journal_task", "journaled"),
    [("1187\n", True), ("<none>\n", False), (None, False)],
    ids=["ext4 with a journal", "ext4 without one", "not ext4"],
)
def test_the_journal_is_what_the_kernel_reports(
    tmp_path: Path, journal_task: str | None, journaled: bool
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sys_root = fake_sys(tmp_path / "sys", data, journal_task)
    assert journal_commits_names(data, sys_root=sys_root) is journaled


def test_a_tmpfs_has_no_journal(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ram", 8) as ram:
        assert journal_commits_names(ram) is False
        assert Spool(ram / "data").journaled is False


# -- the order commit keeps -----------------------------------------------------------------


def _received(spool: Spool, data: bytes) -> tuple[Path, int]:
    tmp = spool.new_tmp_path()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    return tmp, fd


def _record(monkeypatch: pytest.MonkeyPatch, dst: Path) -> list[str]:
    """What commit flushes, in order: "file" (with whether its name was there yet), "folder"."""
    calls: list[str] = []
    real_fsync, real_dir = Spool.fsync_received, spool_module.fsync_dir

    def fsync(path: Path, fd: int | None) -> None:
        calls.append("file, named" if dst.exists() else "file")
        real_fsync(path, fd)

    def fsync_dir(path: Path) -> None:
        if Path(path) == dst.parent:  # the study folder (ensure_dir flushes its parents)
            calls.append("folder, named" if dst.exists() else "folder")
        real_dir(path)

    monkeypatch.setattr(Spool, "fsync_received", staticmethod(fsync))
    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    return calls


@pytest.mark.parametrize(
    ("journaled", "order"),
    [(True, ["file, named"]), (False, ["file", "folder, named"])],
    ids=["journaled ext4", "elsewhere"],
)
def test_commit_flushes_once_where_the_journal_carries_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journaled: bool, order: list[str]
) -> None:
    spool = Spool(tmp_path / "data", journaled=journaled)
    rel = spool.instance_path("1.2.3", "1.2.3.4")
    dst = spool.absolute(rel)
    tmp, fd = _received(spool, b"\x01\x02" * 1000)
    flushes = _record(monkeypatch, dst)
    try:
        spool.commit(tmp, rel, fd=fd)
    finally:
        os.close(fd)
    assert flushes == order
    assert dst.read_bytes() == b"\x01\x02" * 1000
    assert not tmp.exists()


def test_a_name_left_in_tmp_by_a_crash_after_the_link_is_not_a_partial_receive(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "data", journaled=True)
    stored, fd = _received(spool, b"stored")
    os.close(fd)
    rel = spool.instance_path("1.2.3", "1.2.3.5")
    spool.ensure_dir(spool.absolute(rel).parent)
    os.link(stored, spool.absolute(rel))  # the crash came before commit's unlink
    _partial, fd = _received(spool, b"half an obj")
    os.close(fd)
    assert spool.clean_tmp() == 1
    assert list(spool.tmp_dir.iterdir()) == []
    assert spool.absolute(rel).read_bytes() == b"stored"


# -- the box, receiving with one flush each --------------------------------------------------


def test_the_box_on_a_journal_stores_each_object_whole_with_one_flush(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders: list[Path] = []
    real_dir = spool_module.fsync_dir
    monkeypatch.setattr(
        spool_module, "fsync_dir", lambda path: (folders.append(Path(path)), real_dir(path))
    )
    # This machine's disk may have no journal: the box is told its storage has one (the
    # build_appliance seam), as the appliance's data partition has.
    box = make_box(journaled=lambda root: True)
    assert box.spool.journaled
    files = make_ct_series(tmp_path / "ct", n=6, rows=64, cols=64)
    storescu(LOOPBACK, box.dicom.port, files)
    assert box.index.studies()[0].instance_count == 6
    study_folders = set()
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        kept = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        assert dataset_bytes_hash(kept) == dataset_bytes_hash(sent)
        study_folders.add(kept.parent)
    assert list(box.spool.tmp_dir.iterdir()) == []
    assert not study_folders & set(folders)  # no folder fsync per object: the journal's


def test_trust_journal_false_keeps_the_folder_flush(make_box: BoxFactory) -> None:
    box = make_box(journaled=lambda root: True, storage={"trust_journal": False})
    assert not box.spool.journaled
