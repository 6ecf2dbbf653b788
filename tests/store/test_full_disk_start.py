"""A box restarted on a disk with no free byte at all starts: it says why in its health, lists
what it holds, answers C-ECHO and refuses new instances (0xA700); with room again, it writes
again, and the next start is back to the index's normal mode.

The disk is real: a small tmpfs filled to the last byte (as tests/health and tests/web do), on
which SQLite cannot size the index's wal-index (`-shm`) file: "disk I/O error"
(SQLITE_IOERR_SHMSIZE) at the first access. Mounting needs root, as `make test` runs.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from afra.app import Appliance, build_appliance
from afra.config import Config
from afra.store.sqlite import WAL_RESERVE_BYTES
from tests.conftest import LOOPBACK, make_config
from tests.dicom.conftest import send_raw
from tests.dicomgen import make_instance
from tests.disks import fill, tmpfs
from tests.fakes import FakeClock
from tests.peers import echoscu

STUDY = "1.2.826.0.1.3680043.8.498.10"
DISK_PROBLEMS = {"disk_floor", "storage_unwritable"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own (the index reserves 8 MiB of write-ahead log)."""
    with tmpfs(tmp_path / "disk", 64) as mount:
        yield mount


def started(config: Config, clock: FakeClock, boxes: list[Appliance]) -> Appliance:
    box = build_appliance(config, clock=clock)
    boxes.append(box)
    box.start()
    return box


def closed(box: Appliance, boxes: list[Appliance]) -> None:
    boxes.remove(box)
    box.close()


def disk_problems(box: Appliance, clock: FakeClock) -> set[str]:
    clock.advance(60)  # the storage check comes due
    assert box.monitor is not None
    box.monitor.run_once()
    return {r.condition for r in box.health.reasons} & DISK_PROBLEMS


def read_elsewhere(index: Path) -> list[str]:
    """What another process (`afra studies`) reads: raises while the box holds the index."""
    db = sqlite3.connect(index, timeout=0.2)
    try:
        return [str(r[0]) for r in db.execute("SELECT study_uid FROM studies")]
    finally:
        db.close()


def test_a_box_restarted_on_a_full_disk_starts_reports_it_and_keeps_its_studies(
    small_disk: Path, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(small_disk / "box", storage={"min_free_mb": 1})
    index = config.box.data_dir / "index.sqlite"
    boxes: list[Appliance] = []
    try:
        first = started(config, clock, boxes)
        held = make_instance(tmp_path / "held.dcm", study_uid=STUDY, seed=1)
        assert send_raw(first.dicom.port, held) == 0
        closed(first, boxes)
        filler = fill(small_disk)

        caplog.set_level(logging.WARNING, logger="afra.store")
        box = started(config, clock, boxes)  # raised "disk I/O error" before the fix
        assert disk_problems(box, clock)
        assert [s.study_uid for s in box.index.studies()] == [STUDY]
        assert box.index.exclusive
        paths = box.index.all_paths()  # what start-up's review asks, on the one connection
        assert box.index.indexed_among([*paths, "objects/no/such.dcm"]) == paths != set()
        echoscu(LOOPBACK, box.dicom.port)  # raises unless the C-ECHO succeeds
        new = make_instance(tmp_path / "new.dcm", seed=2)
        assert send_raw(box.dicom.port, new) == 0xA700
        assert all(alive() for _name, alive in box.liveness())  # no thread died of the disk
        said = " ".join(r.getMessage() for r in caplog.records if r.name == "afra.store")
        assert "exclusive" in said and "reservation" in said
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            read_elsewhere(index)  # the price of the heap wal-index, said in the log

        filler.unlink()  # room again: the same run writes again
        assert not disk_problems(box, clock)
        assert send_raw(box.dicom.port, new) == 0
        assert len(box.index.studies()) == 2
        closed(box, boxes)

        again = started(config, clock, boxes)  # the normal mode again
        assert sorted(read_elsewhere(index)) == sorted(s.study_uid for s in again.index.studies())
        assert Path(f"{index}-wal").stat().st_size >= WAL_RESERVE_BYTES
        integrity = again.index._db.execute("PRAGMA integrity_check").fetchall()
        assert integrity == [("ok",)]
    finally:
        for box in boxes:
            box.close()
