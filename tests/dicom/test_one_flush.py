"""One flush per received object on a journaled ext4 (docs/ARCHITECTURE.md, "One flush per
instance on a journaled ext4"): the file's pages are written out, it is linked under its name,
then one fsync of the file commits the journal transaction that holds both. Elsewhere (ext4
without a journal too) POSIX's order stays: fsync the file, link, fsync the folder. What
reaches the device is checked on real ext4 filesystems, with and without a journal."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from afra.dicom import receive as receive_module
from afra.dicom import spool as spool_module
from afra.dicom.receive import Receiver, StoreRequest
from afra.dicom.spool import DIRECT_ALIGN, O_DIRECT, Spool, fsync_covers_new_names
from afra.errors import StorageError
from afra.store.index import StoredInstance
from medix.durable import fsync_file
from tests.conftest import BoxFactory
from tests.dicom.conftest import LOOPBACK, store_one
from tests.dicomgen import dataset_bytes_hash, make_ct_series, make_instance
from tests.disks import tmpfs
from tests.peers import storescu

# -- which filesystems take one flush ------------------------------------------------------


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
    ("journal_task", "one_flush"),
    [("1187\n", True), ("<none>\n", False), ("", False), (None, False)],
    ids=["ext4 with a journal", "ext4 without one", "unreadable", "not ext4"],
)
def test_ext4_is_what_the_kernel_reports(
    tmp_path: Path, journal_task: str | None, one_flush: bool
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sys_root = fake_sys(tmp_path / "sys", data, journal_task)
    assert fsync_covers_new_names(data, sys_root=sys_root) is one_flush


def test_a_tmpfs_keeps_posix_order(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ram", 8) as ram:
        assert fsync_covers_new_names(ram) is False
        assert Spool(ram / "data").one_flush is False


# -- what reaches the device ----------------------------------------------------------------


@contextmanager
def ext4(image: Path, mount: Path, *, journal: bool) -> Iterator[Path]:
    """A real ext4 on a loop device (root, as `make test` runs). With a journal, commits come
    every 300 s (`commit=300`), so the periodic one does not flush anything during a test;
    without one, dirty metadata waits 30 s (the kernel's dirty_expire) for writeback."""
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    features = ["-O", "has_journal" if journal else "^has_journal"]
    options = "loop,commit=300" if journal else "loop"
    subprocess.run(["mkfs.ext4", "-q", "-F", *features, str(image)], check=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", options, str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def on_the_device(image: Path, path: str) -> bytes | None:
    """The file at `path` as a power cut now would leave it: the device's blocks copied (what
    the loop device was given, not the filesystem's caches), the journal replayed and the copy
    repaired by e2fsck, then read by debugfs. None when the name is not there."""
    copy = image.with_suffix(".cut")
    shutil.copyfile(image, copy)
    checked = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # 1: repaired
    found = subprocess.run(
        ["debugfs", "-c", "-R", f"stat /{path}", str(copy)], capture_output=True, text=True
    )
    if "File not found" in found.stderr + found.stdout:
        return None
    out = subprocess.run(
        ["debugfs", "-c", "-R", f"cat /{path}", str(copy)], capture_output=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no journal"])
def test_commit_puts_the_file_and_its_name_on_a_real_ext4(tmp_path: Path, journal: bool) -> None:
    with ext4(tmp_path / "ext4.img", tmp_path / "mnt", journal=journal) as mnt:
        spool = Spool(mnt / "data")
        assert spool.one_flush is journal  # found from /sys on the real filesystem
        # The check can fail: a file linked after the commit, and not flushed, is not there.
        # Its folder is made first (a folder's fsync commits a journal's every change).
        unflushed = spool.instance_path("1.2.3.9", "1.2.3.9.1")
        spool.ensure_dir(spool.absolute(unflushed).parent)
        payload = os.urandom(512 * 1024 + 1234)
        rel = spool.instance_path("1.2.3", "1.2.3.4")
        tmp, fd = _received(spool, payload)
        try:
            spool.commit(tmp, rel, fd=fd)
        finally:
            os.close(fd)
        late, fd = _received(spool, b"not flushed")
        os.close(fd)
        os.link(late, spool.absolute(unflushed))
        image = tmp_path / "ext4.img"
        assert on_the_device(image, f"data/{unflushed}") is None
        assert on_the_device(image, f"data/{rel}") == payload


@pytest.mark.parametrize("tail", [True, False], ids=["direct, tail buffered", "buffered"])
def test_a_cut_after_the_link_never_leaves_a_short_file_under_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bool
) -> None:
    """Another association's fsync commits the journal between this commit's link and its
    own fsync, and the power goes: under the name there is the whole file or nothing, never
    a file cut short (which the next start would leave unindexed under the instance's name)."""
    with ext4(tmp_path / "ext4.img", tmp_path / "mnt", journal=True) as mnt:
        spool = Spool(mnt / "data")
        other = mnt / "other"
        other.mkdir()
        payload = os.urandom(512 * 1024 + 1358)
        rel = spool.instance_path("1.2.3", "1.2.3.7")
        tmp = spool.new_tmp_path()
        aligned = (len(payload) // DIRECT_ALIGN) * DIRECT_ALIGN if tail else 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (O_DIRECT if tail else 0), 0o600)
        if aligned:  # as the acceptor writes: aligned blocks direct, the tail through the cache
            with mmap.mmap(-1, aligned) as block:
                block.write(payload[:aligned])
                assert os.write(fd, block) == aligned
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
        assert os.write(fd, payload[aligned:]) == len(payload) - aligned
        seen: list[bytes | None] = []

        def cut_before_own_fsync(path: Path, fd: int | None) -> None:
            if not seen:
                with (other / "x").open("wb") as f:  # another association's flush
                    f.write(b"x")
                    os.fsync(f.fileno())
                seen.append(on_the_device(tmp_path / "ext4.img", f"data/{rel}"))
            os.fsync(fd) if fd is not None else fsync_file(path)

        monkeypatch.setattr(Spool, "fsync_received", staticmethod(cut_before_own_fsync))
        try:
            spool.commit(tmp, rel, fd=fd)
        finally:
            os.close(fd)
        assert seen and seen[0] in (None, payload)


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
    ("one_flush", "order"),
    [(True, ["file, named"]), (False, ["file", "folder, named"])],
    ids=["ext4", "elsewhere"],
)
def test_commit_flushes_once_where_ext4_carries_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_flush: bool, order: list[str]
) -> None:
    spool = Spool(tmp_path / "data", one_flush=one_flush)
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


@pytest.mark.parametrize("one_flush", [True, False], ids=["journaled ext4", "elsewhere"])
def test_a_flush_refused_after_the_link_leaves_no_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_flush: bool
) -> None:
    """The device refuses the flush that comes after the link (the file's on a journaled
    ext4, the folder's elsewhere): commit fails, and the object is not left under its name,
    where the next start would index it."""
    spool = Spool(tmp_path / "data", one_flush=one_flush)
    rel = spool.instance_path("1.2.3", "1.2.3.6")
    dst = spool.absolute(rel)
    tmp, fd = _received(spool, b"never durable")

    def refused(*args: object) -> None:
        if dst.exists():  # after the link only
            raise OSError(errno.EIO, "Input/output error")

    if one_flush:
        monkeypatch.setattr(Spool, "fsync_received", staticmethod(refused))
    else:
        monkeypatch.setattr(spool_module, "fsync_dir", refused)
    try:
        with pytest.raises(StorageError):
            spool.commit(tmp, rel, fd=fd)
    finally:
        os.close(fd)
    assert not dst.exists()
    assert tmp.read_bytes() == b"never durable"  # the receiver discards it


def test_a_write_out_the_kernel_refuses_falls_back_to_posix_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync_file_range refused (a seccomp filter: EPERM): the object is still stored, in
    POSIX's order, rather than every store refused."""

    def refused(*args: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(spool_module, "_sync_file_range", refused)
    spool = Spool(tmp_path / "data", one_flush=True)
    rel = spool.instance_path("1.2.3", "1.2.3.8")
    dst = spool.absolute(rel)
    tmp, fd = _received(spool, b"kept anyway")
    flushes = _record(monkeypatch, dst)
    try:
        spool.commit(tmp, rel, fd=fd)
    finally:
        os.close(fd)
    assert flushes == ["file", "folder, named"]
    assert dst.read_bytes() == b"kept anyway"


def test_a_name_left_in_tmp_by_a_crash_after_the_link_is_not_a_partial_receive(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "data", one_flush=True)
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


def test_the_box_on_ext4_stores_each_object_whole_with_one_flush(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders: list[Path] = []
    real_dir = spool_module.fsync_dir
    monkeypatch.setattr(
        spool_module, "fsync_dir", lambda path: (folders.append(Path(path)), real_dir(path))
    )
    # The test's storage may be a tmpfs or overlay: the box is told it is ext4 (the
    # build_appliance seam), as the appliance's data partition is.
    box = make_box(one_flush=lambda root: True)
    assert box.spool.one_flush
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
    assert not study_folders & set(folders)  # no folder fsync per object


def test_one_flush_false_keeps_the_folder_flush(make_box: BoxFactory) -> None:
    box = make_box(one_flush=lambda root: True, storage={"one_flush": False})
    assert not box.spool.one_flush


# -- a name another process holds ------------------------------------------------------------


def _left_unindexed(make_box: BoxFactory, tmp_path: Path) -> tuple[Path, Any, Any, Any, str, Path]:
    """An instance and a box whose spool holds a copy of it under its name, unindexed, as a
    process that died between its link and its index commit leaves it (the copy written by
    another box). Returns (path, dataset, other box, box, rel, held)."""
    (path,) = make_ct_series(tmp_path / "ct", n=1, rows=32, cols=32)
    ds = dcmread(path, stop_before_pixels=True)
    other = make_box(tmp_path / "other")
    assert store_one(other.dicom.port, path) == 0x0000
    box = make_box()
    rel = box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    held = box.spool.absolute(rel)
    box.spool.ensure_dir(held.parent)
    shutil.copyfile(other.spool.absolute(rel), held)
    return path, ds, other, box, rel, held


def test_the_same_copy_held_but_never_indexed_is_made_durable_and_indexed(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process linked the instance and never indexed it (it died between the two):
    after the wait, the same data set under that name is flushed and indexed here, so the
    sender is answered and the instance travels, instead of being refused until a restart."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    path, ds, other, box, rel, held = _left_unindexed(make_box, tmp_path)
    flushed: list[Path] = []
    real_file, real_dir = spool_module.fsync_file, spool_module.fsync_dir
    monkeypatch.setattr(
        spool_module, "fsync_file", lambda p: (flushed.append(Path(p)), real_file(p))[1]
    )
    monkeypatch.setattr(
        spool_module, "fsync_dir", lambda p: (flushed.append(Path(p)), real_dir(p))[1]
    )
    # While the process that linked it holds its lock, it is still at it: not now.
    with held.open("rb") as alive:
        fcntl.flock(alive.fileno(), fcntl.LOCK_EX)
        assert store_one(box.dicom.port, path) == 0xA700
    assert box.index.find_instance(ds.SOPInstanceUID) is None
    assert held not in flushed
    # It has stopped (its descriptor closed): the copy is made durable and indexed here.
    assert store_one(box.dicom.port, path) == 0x0000
    found = box.index.find_instance(ds.SOPInstanceUID)
    assert found is not None and found.path == rel
    assert box.index.studies()[0].instance_count == 1
    assert held.read_bytes() == other.spool.absolute(rel).read_bytes()  # kept as it was
    assert held in flushed and held.parent in flushed


def test_a_different_copy_held_but_never_indexed_is_indexed_as_the_first(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A different, whole copy of the instance under its name, unindexed, its lock free: it
    may have been acknowledged (a power cut undid its row, and start-up could not index it
    again), so it stays in the study as start-up would have had it, and the copy sent now is
    one sent again: kept in conflicts/ for review. Before, every copy was refused (0xA700)."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    sent = make_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.3.99", study_uid="1.2.3.98")
    theirs = make_instance(
        tmp_path / "b.dcm", sop_instance_uid="1.2.3.99", study_uid="1.2.3.98", seed=2
    )
    other = make_box(tmp_path / "other")  # the copy as a box stored it, from THEIRS
    assert store_one(other.dicom.port, theirs, calling="THEIRS") == 0x0000
    box = make_box()
    rel = box.spool.instance_path("1.2.3.98", "1.2.3.99")
    held = box.spool.absolute(rel)
    box.spool.ensure_dir(held.parent)
    shutil.copyfile(other.spool.absolute(rel), held)
    first = held.read_bytes()
    with held.open("rb") as alive:  # while someone holds its lock, it is still theirs
        fcntl.flock(alive.fileno(), fcntl.LOCK_EX)
        assert store_one(box.dicom.port, sent) == 0xA700
    assert box.index.find_instance("1.2.3.99") is None
    flushed: list[Path] = []
    real_file = spool_module.fsync_file
    monkeypatch.setattr(
        spool_module, "fsync_file", lambda p: (flushed.append(Path(p)), real_file(p))[1]
    )
    assert store_one(box.dicom.port, sent) == 0x0000
    found = box.index.find_instance("1.2.3.99")
    assert found is not None and found.path == rel
    assert held.read_bytes() == first  # the first copy stays
    assert held in flushed  # made durable before its row
    held_copy = box.index.held_copy("1.2.3.99")
    assert held_copy is not None
    assert (held_copy.sha256, held_copy.calling_ae) == (None, "THEIRS")  # sender from its meta
    (conflict,) = box.index.conflicts()
    kept = dcmread(box.spool.absolute(conflict.path))
    assert kept.PixelData == dcmread(sent).PixelData
    assert box.index.studies()[0].instance_count == 1


def test_an_unreadable_file_under_the_name_gives_way_to_the_copy_sent(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage under the instance's name, unindexed (start-up could not read it): nobody's
    copy. It is moved to conflicts/, its old name's folder flushed (after a power cut the
    name stays gone), and the copy sent is stored there; before, every copy of that
    instance was refused (0xA700) until someone removed the file by hand."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    box = make_box()
    sent = make_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.3.97", study_uid="1.2.3.96")
    rel = box.spool.instance_path("1.2.3.96", "1.2.3.97")
    held = box.spool.absolute(rel)
    box.spool.ensure_dir(held.parent)
    held.write_bytes(b"\0" * 4096)
    events: list[str] = []
    real_dir = spool_module.fsync_dir

    def fsync_dir(folder: Path) -> None:
        if Path(folder) == held.parent:
            events.append("folder, named" if held.exists() else "folder, unnamed")
        real_dir(folder)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    assert store_one(box.dicom.port, sent) == 0x0000
    assert events[0] == "folder, unnamed"  # the move out flushed before the new link
    found = box.index.find_instance("1.2.3.97")
    assert found is not None and found.path == rel
    assert dcmread(held).PixelData == dcmread(sent).PixelData
    (conflict,) = box.index.conflicts()
    assert box.spool.absolute(conflict.path).read_bytes() == b"\0" * 4096


def test_a_copy_stored_elsewhere_while_an_unreadable_file_is_set_aside_is_kept(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set-aside frees the name; another process (its own receiver) stores its copy
    there at that moment and answers stored. That copy stays, with its row, and the first
    store's copy is the one sent again (found by review: the name was removed a second
    time, and the other process's acknowledged copy went with it)."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    box = make_box()
    a = make_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.3.93", study_uid="1.2.3.92")
    b = make_instance(tmp_path / "b.dcm", sop_instance_uid="1.2.3.93", study_uid="1.2.3.92", seed=2)
    rel = box.spool.instance_path("1.2.3.92", "1.2.3.93")
    named = box.spool.absolute(rel)
    box.spool.ensure_dir(named.parent)
    named.write_bytes(b"\0" * 4096)  # what start-up left: unreadable, unindexed
    second = Receiver(box.spool, box.index, min_free_bytes=0, clock=box.clock)
    answers: dict[str, int] = {}

    def handed(path: Path, name: str, receiver: Receiver) -> int:
        ds = dcmread(path, stop_before_pixels=True)
        tmp = box.spool.tmp_dir / name
        shutil.copyfile(path, tmp)
        request = StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, ds.SOPClassUID, name, LOOPBACK)
        return receiver.store(tmp, request)

    real_keep = box.spool.keep_conflict

    def keep_then_another_stores(src: Path, uid: str, **kwargs: bool) -> str:
        kept = real_keep(src, uid, **kwargs)
        if "B" not in answers:
            answers["B"] = handed(b, "B", second)
        return kept

    monkeypatch.setattr(box.spool, "keep_conflict", keep_then_another_stores)
    answers["A"] = handed(a, "A", box.receiver)
    assert answers == {"B": 0x0000, "A": 0x0000}
    found = box.index.find_instance("1.2.3.93")
    assert found is not None and found.size == named.stat().st_size
    assert dcmread(named).PixelData == dcmread(b).PixelData  # B's, acknowledged, kept
    kept = {box.spool.absolute(c.path).read_bytes()[:4] for c in box.index.conflicts()}
    assert len(box.index.conflicts()) == 2 and b"\0\0\0\0" in kept  # garbage and A's copy


def test_a_name_another_process_indexes_while_the_store_waits_is_a_duplicate(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race itself: the lookup misses (the other process has linked, not yet committed),
    the link finds the name taken, and the other process's row arrives: one copy, success."""
    box = make_box()
    (path,) = make_ct_series(tmp_path / "ct", n=1, rows=32, cols=32)
    assert store_one(box.dicom.port, path) == 0x0000  # "the other process": stored and indexed
    real_find = box.index.find_instance
    lookups: list[str] = []

    def find(uid: str) -> StoredInstance | None:
        lookups.append(uid)
        return None if len(lookups) == 1 else real_find(uid)  # the first lookup: too early

    monkeypatch.setattr(box.index, "find_instance", find)
    added: list[str] = []
    real_add = box.index.add_instance

    def add(header: Any, *args: Any) -> Any:
        added.append(header.sop_instance_uid)
        return real_add(header, *args)

    monkeypatch.setattr(box.index, "add_instance", add)
    ds = dcmread(path, stop_before_pixels=True)
    held = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
    with held.open("rb") as alive:  # the other process is still at it, as it commits
        fcntl.flock(alive.fileno(), fcntl.LOCK_EX)
        assert store_one(box.dicom.port, path) == 0x0000
    assert len(lookups) >= 2  # it waited for the index, it did not trust the name alone
    assert added == []  # the other process's row, not one of its own
    assert box.index.studies()[0].instance_count == 1
    assert len(list((box.spool.root / "objects").rglob("*.dcm"))) == 1


def test_a_name_taken_again_while_the_store_looks_is_not_adopted(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held file's lock is free, but by then its owner has taken the name away and a
    third store has linked its own copy there (and holds its lock): that copy is not this
    store's to flush, index and answer for."""
    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)
    path, ds, other, box, rel, held = _left_unindexed(make_box, tmp_path)
    third = tmp_path / "third.dcm"
    shutil.copyfile(other.spool.absolute(rel), third)
    real_flock = fcntl.flock
    holders: list[Any] = []

    def flock(fd: int, flags: int) -> None:
        if flags & fcntl.LOCK_NB and not holders:  # the adoption's try, on the first owner
            held.unlink()  # that owner's flush failed: its name went
            os.link(third, held)  # a third store's copy, its lock held
            holders.append(held.open("rb"))
            real_flock(holders[0].fileno(), fcntl.LOCK_EX)
        real_flock(fd, flags)

    monkeypatch.setattr(receive_module.fcntl, "flock", flock)
    try:
        assert store_one(box.dicom.port, path) == 0xA700
    finally:
        for f in holders:
            f.close()
    assert holders
    assert box.index.find_instance(ds.SOPInstanceUID) is None
