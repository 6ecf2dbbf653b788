"""What start-up leaves for review (docs/conformance.md, "Files start-up leaves for review"):
shown in health and the diagnostics until resolved, and mended by sending the study again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance, build_appliance
from afra.datadir import DataDir
from afra.dicom import receive as receive_module
from medix.hub.server import HubServer
from tests.conftest import BoxFactory, make_config, wait_for
from tests.fakes import FakeClock
from tests.peers import storescu
from tests.uplink.conftest import (
    LOOPBACK,
    assert_hub_holds,
    complete_and_deliver,
    send_study,
    stored_rel,
    the_study,
    upload_fails_at,
)


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
    gone = stored_rel(box, files[1])
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
    torn = stored_rel(box, files[0])
    box.close()
    # Its row undone, its content garbage: what a cut can leave of a file and its index row.
    with sqlite3.connect(DataDir(box.spool.root).index) as db:
        db.execute("DELETE FROM instances WHERE path = ?", (torn,))
        db.execute("UPDATE studies SET instance_count = instance_count - 1")
    garbage = b"\0" * 4096
    box.spool.absolute(torn).write_bytes(garbage)

    box = enrolled_box(hub)
    assert [rel for rel, _ in box.startup.left_in_place] == [torn]
    assert box.startup_files is not None  # its check, run here: the study is not complete yet
    box.startup_files.check(box.health)
    assert "files_need_review" in {r.condition for r in box.health.reasons}
    listed = box.diagnostics()["files_to_review"]
    assert [f["path"] for f in listed] == [torn] and "cannot be read" in listed[0]["problem"]

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


def _review(box: Appliance) -> set[str]:
    assert box.startup_files is not None
    box.startup_files.check(box.health)
    return {r.condition for r in box.health.reasons}


def test_a_study_the_hub_has_begun_takes_back_only_the_bytes_it_was_told_of(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The study was registered with the hub, its parts sent, and the commit had not come
    when a file went. The hub was told of that file's bytes, and the box writes who sent an
    object into its file meta: a copy from another AE differs, and taking it would leave the
    upload refused for ever (409 or 422) while health said all was well. Such a copy is kept
    for review and the file stays missing (health still says so); the copy from the first
    sender is byte for byte the one registered, puts the file back, and the study goes."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "BEGUN", n=3)  # from STORESCU
    upload_fails_at(box, clock, files, "commit")
    assert the_study(box, files).state == "uploading"  # type: ignore[attr-defined]
    gone = stored_rel(box, files[1])
    box.close()
    box.spool.absolute(gone).unlink()

    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files, aet="PACS2")
    assert not box.spool.absolute(gone).exists()
    (conflict,) = box.index.conflicts()
    assert conflict.calling_ae == "PACS2"
    assert "files_need_review" in _review(box)

    storescu(LOOPBACK, box.dicom.port, files[1:2])  # from the first sender
    assert box.spool.absolute(gone).exists()
    assert "files_need_review" not in _review(box)
    wait_for(
        lambda: the_study(box, files).state == "delivered",  # type: ignore[attr-defined]
        what="the study delivered",
        tick=lambda: clock.advance(5),
    )
    assert_hub_holds(hub, box, the_study(box, files), files)


def test_a_purged_study_is_not_filled_again_by_a_copy_sent_again(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Delivered and purged: its files are gone on purpose. The study sent again is answered
    stored and nothing is put back on the device."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "PURGED", n=2)
    study = complete_and_deliver(box, clock, files)
    clock.advance(box.policy.current.retention_days * 86400 + 1)
    assert box.uplink.purge_delivered() == 1
    storescu(LOOPBACK, box.dicom.port, files)
    assert list((box.spool.root / "objects").rglob("*.dcm")) == []
    assert the_study(box, files).id == study.id  # type: ignore[attr-defined]


def test_a_bundle_made_outside_the_running_box_does_not_pretend_to_know(
    tmp_path: Path, clock: FakeClock
) -> None:
    """`afra node diagnostics` builds the box without starting it: what the running box's
    start left is not known there, and the bundle says so instead of an empty list."""
    box = build_appliance(make_config(tmp_path / "box"), clock=clock)
    try:
        assert box.diagnostics()["files_to_review"] == {
            "ok": False,
            "error": "known to the running box only",
        }
    finally:
        box.close()
