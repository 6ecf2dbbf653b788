"""Received objects written with O_DIRECT through the association's aligned buffer
(docs/ARCHITECTURE.md), and buffered where the filesystem refuses direct I/O: the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from afra.dicom.acceptor import STAGING_BYTES
from afra.dicom.spool import DIRECT_ALIGN, O_DIRECT, direct_io_works
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import LOOPBACK
from tests.dicomgen import dataset_bytes_hash, dataset_offset, make_instance
from tests.peers import storescu

# Pixel data sizes whose data sets end below, at and around the alignment and the buffer's
# size (one buffer, several, and an empty tail), plus no pixel data at all.
PIXEL_BYTES = (
    None,
    2,
    DIRECT_ALIGN - 512,
    DIRECT_ALIGN * 3,
    STAGING_BYTES - 1024,
    STAGING_BYTES,
    STAGING_BYTES + 2,
    3 * STAGING_BYTES + 4098,
)


def _sent_and_kept(tmp_path: Path, make_box: BoxFactory, direct: bool) -> list[tuple[Path, Path]]:
    box = make_box()
    box.spool.direct_io = direct
    files = [
        make_instance(tmp_path / "sent" / f"{n}.dcm", pixel_bytes=size, instance_number=n + 1)
        for n, size in enumerate(PIXEL_BYTES)
    ]
    storescu(LOOPBACK, box.dicom.port, files)
    pairs = []
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        rel = box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        pairs.append((sent, box.spool.absolute(rel)))
    return pairs


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_stored_exactly_as_sent_whatever_the_size(
    make_box: BoxFactory, tmp_path: Path, direct: bool
) -> None:
    # The tests' disk takes O_DIRECT (ext4 or the like; tmpfs only from Linux 6.6): else
    # this says so instead of passing on the buffered path twice.
    assert not direct or direct_io_works(tmp_path), "the test's filesystem refuses O_DIRECT"
    for sent, kept in _sent_and_kept(tmp_path, make_box, direct):
        sent_data = sent.stat().st_size - dataset_offset(sent)
        # No padding left behind: the file ends where the data set ends.
        assert kept.stat().st_size - dataset_offset(kept) == sent_data, sent.name
        assert dataset_bytes_hash(kept) == dataset_bytes_hash(sent), sent.name


def _open_tmp_flags(tmp_dir: Path) -> list[int]:
    """The open flags of this process's descriptors on files in tmp/ (the association's spare
    temp file, opened while it waits for the next C-STORE)."""
    flags = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp_dir)) and target.endswith(".part"):
            with open(f"/proc/self/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("flags:"):
                        flags.append(int(line.split()[1], 8))
    return flags


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_temp_files_opened_direct_only_where_the_spool_says(
    make_box: BoxFactory, tmp_path: Path, direct: bool
) -> None:
    # The tests' disk takes O_DIRECT (ext4 or the like; tmpfs only from Linux 6.6): else
    # this says so instead of passing on the buffered path twice.
    assert not direct or direct_io_works(tmp_path), "the test's filesystem refuses O_DIRECT"
    box = make_box()
    box.spool.direct_io = direct
    path = make_instance(tmp_path / "a.dcm", pixel_bytes=STAGING_BYTES + 10)
    ae = AE(ae_title="DIRECTTEST")
    ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dcmread(path))
        assert status.Status == 0x0000
        # The next C-STORE's temp file is made on another thread after the response.
        wait_for(
            lambda: _open_tmp_flags(box.spool.tmp_dir),
            what="the association keeps a temp file open for its next C-STORE",
        )
        flags = _open_tmp_flags(box.spool.tmp_dir)
        assert all(bool(f & O_DIRECT) == direct for f in flags)
    finally:
        assoc.release()
    ds = dcmread(path, stop_before_pixels=True)
    kept = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
    assert dcmread(kept).PixelData == dcmread(path).PixelData


def test_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    works = direct_io_works(tmp_path)
    assert isinstance(works, bool)
    assert list(tmp_path.iterdir()) == []


def test_direct_writes_can_be_turned_off(make_box: BoxFactory, tmp_path: Path) -> None:
    assert direct_io_works(tmp_path)
    box = make_box(storage={"direct_writes": False})
    assert box.spool.direct_io is False  # not probed: the setting says no
    ae = AE(ae_title="DIRECTTEST")
    path = make_instance(tmp_path / "b.dcm", pixel_bytes=STAGING_BYTES + 10)
    ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    try:
        assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        # The next C-STORE's temp file is made on another thread after the response.
        wait_for(
            lambda: _open_tmp_flags(box.spool.tmp_dir),
            what="the association keeps a temp file open for its next C-STORE",
        )
        flags = _open_tmp_flags(box.spool.tmp_dir)
        assert flags and not any(f & O_DIRECT for f in flags)
    finally:
        assoc.release()
