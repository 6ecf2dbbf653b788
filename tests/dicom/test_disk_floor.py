"""A box at the free-disk floor says so: health failed while it refuses, the log at a steady rate;
and a flush the storage refuses is never acknowledged.

The disk here is a stand-in that fills as the box writes (tests.dicom.conftest.FillingDisk: free
space = what was left minus the bytes in the spool), so the box parks just above the floor the
way a real card does: each instance, once written, takes it below; once removed, the disk is
back above it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from afra.app import Appliance
from afra.dicom.receive import StoreRequest
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import FillingDisk, send_raw
from tests.dicomgen import make_instance
from tests.fakes import FakeClock
from tests.faults.harness import dataset_bytes

MB = 2**20
FLOOR_MB = 1


def check_health(box: Appliance, clock: FakeClock) -> None:
    clock.advance(60)  # the storage check comes due
    assert box.monitor is not None
    box.monitor.run_once()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "afra.receive" and r.levelno >= logging.ERROR
    ]


def test_a_box_parked_at_the_floor_reports_failed_while_it_refuses_studies(
    make_box: BoxFactory, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "box"
    box = make_box(
        root, usage=FillingDisk(root, 4096, floor_mb=FLOOR_MB), storage={"min_free_mb": FLOOR_MB}
    )
    check_health(box, clock)
    assert "disk_floor" not in {r.condition for r in box.health.reasons}

    caplog.set_level(logging.INFO, logger="afra.receive")
    for n in range(5):  # each is about 8 KB: over the 4 KB left above the floor
        path = make_instance(tmp_path / f"{n}.dcm", pixel_bytes=8192)
        assert send_raw(box.dicom.port, path) == 0xA700
    wait_for(lambda: list(box.spool.tmp_dir.iterdir()) == [], timeout=10, what="tmp/ empty")
    assert box.index.studies() == []
    check_health(box, clock)  # free space is above the floor again now the files are gone
    assert box.health.state == "failed"
    reason = next(r for r in box.health.reasons if r.condition == "disk_floor")
    assert "new instances refused" in reason.detail
    assert len(refusal_lines(caplog)) == 1  # not one per instance

    clock.advance(61)  # a minute on: one more line, with the count
    assert send_raw(box.dicom.port, make_instance(tmp_path / "x.dcm", pixel_bytes=8192)) == 0xA700
    lines = refusal_lines(caplog)
    assert len(lines) == 2 and "still refusing new instances: 5 refused" in lines[1]  # 4 + this one

    # Small instances still fit and are taken, large ones still refused: the box stays
    # failed, and the report does not flap with each (one line a minute, as before).
    for n in range(2):  # the 4 KB left holds two small ones
        small = make_instance(tmp_path / f"small{n}.dcm", pixel_bytes=None, seed=10 + n)
        big = make_instance(tmp_path / f"big{n}.dcm", pixel_bytes=8192, seed=20 + n)
        assert send_raw(box.dicom.port, small) == 0x0000
        assert send_raw(box.dicom.port, big) == 0xA700
        assert "disk_floor" in {r.condition for r in box.health.reasons}
    assert len(refusal_lines(caplog)) == 2
    assert not any("taking new instances again" in r.getMessage() for r in caplog.records)


def test_the_failure_ends_when_room_comes_back_with_nobody_sending(
    make_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    root = tmp_path / "box"
    disk = FillingDisk(root, 4096, floor_mb=FLOOR_MB)
    box = make_box(root, usage=disk, storage={"min_free_mb": FLOOR_MB})
    assert send_raw(box.dicom.port, make_instance(tmp_path / "a.dcm", pixel_bytes=8192)) == 0xA700
    check_health(box, clock)
    assert box.health.state == "failed"

    disk.headroom = 2 * MB  # delivered studies purged: room for what was refused
    check_health(box, clock)
    assert "disk_floor" not in {r.condition for r in box.health.reasons}
    assert send_raw(box.dicom.port, make_instance(tmp_path / "b.dcm", pixel_bytes=8192)) == 0x0000


def test_an_io_error_on_fsync_is_never_acknowledged(
    box: Appliance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel refuses the flush (here: fsync on a pipe, EINVAL, a real error): the
    instance is answered out-of-resources, nothing is indexed, and the next one is taken."""
    path = make_instance(tmp_path / "a.dcm")
    tmp = box.spool.tmp_dir / "fsync-refused.part"
    shutil.copyfile(path, tmp)
    read_end, write_end = os.pipe()
    head = dataset_bytes(path.read_bytes())
    try:
        status = box.receiver.store(
            tmp,
            StoreRequest(
                sop_class_uid=CTImageStorage,
                sop_instance_uid=str(dcmread(path, stop_before_pixels=True).SOPInstanceUID),
                context_abstract_syntax=CTImageStorage,
                calling_ae="FSYNC",
                peer_address="127.0.0.1",
                head=head[:65536],
                data_size=len(head),
                transfer_syntax="1.2.840.10008.1.2.1",
                fd=read_end,
            ),
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert status == 0xA700
    assert any("check the storage device" in r.getMessage() for r in caplog.records)
    assert box.index.studies() == [] and list((box.spool.root / "objects").rglob("*.dcm")) == []
    assert send_raw(box.dicom.port, make_instance(tmp_path / "b.dcm", seed=3)) == 0x0000
