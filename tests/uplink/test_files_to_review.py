"""What start-up leaves for review (docs/conformance.md, "Files start-up leaves for review"):
shown in health and the diagnostics until resolved, and mended by sending the study again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance
from afra.datadir import DataDir
from afra.dicom import receive as receive_module
from medix.hub.server import HubServer
from tests.conftest import BoxFactory
from tests.fakes import FakeClock
from tests.peers import storescu
from tests.uplink.conftest import (
    LOOPBACK,
    assert_hub_holds,
    complete_and_deliver,
    send_study,
    the_study,
)


def _rel(box: Appliance, path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)


def _checked(box: Appliance, clock: FakeClock) -> set[str]:
    """The health conditions after a pass of every check (the injected clock moved on)."""
    assert box.monitor is not None
    clock.advance(box.config.health.check_interval + 1)
    box.monitor.run_once()
    return {r.condition for r in box.health.reasons}


def test_a_file_gone_from_the_device_is_shown_and_the_study_sent_again_delivers(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """An acknowledged instance's file is gone (a failing card, a hand in the folder): the
    study could never be delivered, and the copy sent again went to conflicts/. Now the box
    says so at start (degraded, the path in the diagnostics), the study sent again from the
    PACS puts the file back in its study, and the study reaches the hub whole."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "GONE", n=3)
    gone = _rel(box, files[1])
    box.close()
    box.spool.absolute(gone).unlink()

    box = enrolled_box(hub)
    assert box.startup.missing_files == [gone]
    assert "files_need_review" in _checked(box, clock)
    assert box.health.state == "degraded"
    listed = box.diagnostics()["files_to_review"]
    assert [f["path"] for f in listed] == [gone] and "missing" in listed[0]["problem"]

    storescu(LOOPBACK, box.dicom.port, files, aet="PACS2")  # the whole study, again
    assert box.spool.absolute(gone).exists()
    assert box.index.conflicts() == []  # the two still held were duplicates, kept once
    assert "files_need_review" not in _checked(box, clock)
    assert box.diagnostics()["files_to_review"] == []

    study = complete_and_deliver(box, clock, files)
    assert study.instance_count == 3  # type: ignore[attr-defined]
    assert_hub_holds(hub, box, study, files)


def test_a_file_start_up_could_not_read_gives_way_to_the_copy_sent_again(
    hub: HubServer,
    enrolled_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stored file cut to garbage under its instance's name and unindexed (a power cut
    undid its row, the card lost its tail): start-up cannot read it and leaves it. Every copy
    sent again met that name and was refused (0xA700) for good. Now the file is kept in
    conflicts/ for review, the copy sent again is stored and delivered, and health clears."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "TORN", n=2)
    torn = _rel(box, files[0])
    box.close()
    # Its row undone, its content garbage: what a cut can leave of a file and its index row.
    with sqlite3.connect(DataDir(box.spool.root).index) as db:
        db.execute("DELETE FROM instances WHERE path = ?", (torn,))
        db.execute("UPDATE studies SET instance_count = instance_count - 1")
    garbage = b"\0" * 4096
    box.spool.absolute(torn).write_bytes(garbage)

    box = enrolled_box(hub)
    assert box.startup.left_in_place == [torn]
    assert box.startup_files is not None  # its check, run here: the study is not complete yet
    box.startup_files.check(box.health)
    assert "files_need_review" in {r.condition for r in box.health.reasons}
    listed = box.diagnostics()["files_to_review"]
    assert [f["path"] for f in listed] == [torn] and "not indexed" in listed[0]["problem"]

    monkeypatch.setattr(receive_module, "INDEXED_WAIT_S", 0.05)  # no other process stores it
    storescu(LOOPBACK, box.dicom.port, files[:1])
    (conflict,) = box.index.conflicts()
    assert box.spool.absolute(conflict.path).read_bytes() == garbage  # kept, not deleted
    assert box.index.find_instance(dcmread(files[0]).SOPInstanceUID) is not None
    box.startup_files.check(box.health)
    assert "files_need_review" not in {r.condition for r in box.health.reasons}

    study = complete_and_deliver(box, clock, files)
    assert_hub_holds(hub, box, study, files)
    assert the_study(box, files).instance_count == 2  # type: ignore[attr-defined]
