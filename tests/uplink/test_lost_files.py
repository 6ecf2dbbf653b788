"""A study revision the hub cannot complete because a file went before the hub held its part
(afra/uplink/lost.py): it is registered afresh under the study's next revision number, and a
copy sent again takes the lost file's place, also one kept in conflicts/ meanwhile."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from afra.app import Appliance
from afra.datadir import DataDir
from afra.dicom.header import source_ae_title
from afra.store.index import Index, UploadInstance
from afra.store.records import Demographics
from afra.uplink import lost, stream
from medix.hub.server import HubServer
from tests.conftest import BoxFactory, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import storescu
from tests.uplink.conftest import (
    LOOPBACK,
    lose_file,
    send_study,
    stored_rel,
    the_study,
    upload_fails_at,
)


def _uploads(hub: HubServer, study: Any) -> dict[int, dict[str, Any]]:
    return {u["revision"]: u for u in hub.studies() if u["study_uid"] == study.study_uid}


def _delivered(box: Appliance, clock: FakeClock, files: list[Path]) -> Any:
    wait_for(
        lambda: the_study(box, files).state == "delivered",  # type: ignore[attr-defined]
        what="the study delivered",
        tick=lambda: clock.advance(5),
    )
    return the_study(box, files)


def _assert_hub_holds_once(hub: HubServer, box: Appliance, study: Any, files: list[Path]) -> None:
    """Revision 0's upload left uncommitted, revision 1 committed with what the box holds,
    byte for byte: the study is at the hub once."""
    uploads = _uploads(hub, study)
    assert sorted(uploads) == [0, 1]
    assert uploads[0]["committed_at"] is None
    assert uploads[1]["committed_at"] is not None
    assert uploads[1]["stored_instances"] == len(files)
    assert uploads[1]["medis_code"] == uploads[0]["medis_code"] == study.medis_code
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        kept = box.spool.absolute(stored_rel(box, sent)).read_bytes()
        assert hub.instance_bytes(uploads[1]["upload_id"], ds.SOPInstanceUID) == kept


def test_a_copy_kept_in_conflicts_completes_a_study_the_hub_lacks_a_part_of(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Registered, no part at the hub yet, and a file gone. The copy the PACS sends again
    comes from another AE, so its bytes are not the ones hashed for the hub: it is kept in
    conflicts/ and the study stays missing a file. Before, that study was stuck for ever.
    Now the uplink's next try finds the hub lacks the part, gives the study its next
    revision number, takes the kept copy into the file's place and delivers it whole."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTC", n=3)  # from STORESCU
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[1])

    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files, aet="PACS2")
    assert not box.spool.absolute(gone).exists()  # the study is hashed: kept aside
    (kept,) = box.index.conflicts()
    assert kept.calling_ae == "PACS2" and box.spool.kept_for_lost(kept.path)

    clock.advance(5)  # the next try is due; from here on it goes without waiting
    wait_for(lambda: the_study(box, files).state == "delivered", what="the study delivered")  # type: ignore[attr-defined]
    study = the_study(box, files)
    assert study.revision == 1  # type: ignore[attr-defined]
    assert box.index.conflicts() == []
    assert not box.spool.absolute(kept.path).exists()  # moved into its place, not copied
    assert source_ae_title(box.spool.absolute(gone)) == "PACS2"
    assert study.instance_count == 3  # type: ignore[attr-defined]
    _assert_hub_holds_once(hub, box, study, files)


def test_a_copy_kept_for_review_before_the_loss_is_not_taken_for_the_lost_file(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """conflicts/ also keeps a second copy that differed while the first was there (another
    patient name: an edit at the PACS). Kept for a person to review, it is never put in the
    study's place when the first copy's file is lost later: the study waits for a copy sent
    to replace it, and the edited one stays in conflicts/."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTE", n=2)
    edited = dcmread(files[0])
    edited.PatientName = "Other^Edited"
    edit = tmp_path / "edited.dcm"
    edited.save_as(edit)
    storescu(LOOPBACK, box.dicom.port, [edit], aet="PACS2")
    (review,) = box.index.conflicts()
    assert not box.spool.kept_for_lost(review.path)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[0])

    box = enrolled_box(hub)
    before = the_study(box, files).attempts  # type: ignore[attr-defined]
    wait_for(
        lambda: the_study(box, files).attempts > before + 1,  # type: ignore[attr-defined]
        what="two tries after the loss",
        tick=lambda: clock.advance(5),
    )
    assert not box.spool.absolute(gone).exists()
    assert box.index.conflicts() == [review]

    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS3")
    study = _delivered(box, clock, files)
    _assert_hub_holds_once(hub, box, study, files)
    assert dcmread(box.spool.absolute(gone)).PatientName == dcmread(files[0]).PatientName
    assert box.index.conflicts() == [review]


def test_a_kill_after_the_new_number_leaves_the_kept_copy_to_the_next_try(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The box stopped between giving the revision its new number and taking the kept copy
    (a power cut): the next try, now hashing an unregistered revision, takes the copy."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTK", n=2)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[1])
    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files[1:], aet="PACS2")
    (kept,) = box.index.conflicts()
    assert box.spool.kept_for_lost(kept.path)  # kept to replace the lost file
    study_id = the_study(box, files).id  # type: ignore[attr-defined]
    box.close()
    index = Index(DataDir(box.spool.root).index)
    try:
        assert index.register_afresh(study_id, 0) == 1  # what the stopped uplink had done
    finally:
        index.close()

    box = enrolled_box(hub)
    study = _delivered(box, clock, files)
    assert study.revision == 1
    assert box.index.conflicts() == []
    assert source_ae_title(box.spool.absolute(gone)) == "PACS2"
    _assert_hub_holds_once(hub, box, study, files)


def test_an_index_that_refuses_the_taken_copy_leaves_it_for_the_next_try(
    hub: HubServer,
    enrolled_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row is made the copy's before its name exists: an index that refuses that row
    leaves the copy in conflicts/ and the file missing, and the next try takes it. (The other
    way round, the name would hold the copy with the lost file's size in its row, and every
    later stream would be refused by the hub.)"""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTR", n=2)
    upload_fails_at(box, clock, files, "put_part")
    lose_file(box, files[0])

    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS2")
    real = box.index.restore_instance
    refusals: list[str] = []

    def refuse_once(*args: object, **kwargs: object) -> bool:
        if not refusals:
            refusals.append("refused")
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(box.index, "restore_instance", refuse_once)
    clock.advance(5)
    wait_for(lambda: bool(refusals), what="the refused row")
    study = _delivered(box, clock, files)
    assert study.revision == 1
    assert box.index.conflicts() == []
    _assert_hub_holds_once(hub, box, study, files)


def test_a_lost_file_with_no_copy_yet_is_taken_from_any_sender_once_registered_afresh(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The uplink finds the file gone before any copy came: the study is registered afresh
    (its hashes forgotten) and keeps failing, saying to send it again, until a copy comes;
    that copy, from any sender, then takes the file's place directly (no conflict)."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTN", n=3)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[2])

    box = enrolled_box(hub)
    before = the_study(box, files).attempts  # type: ignore[attr-defined]
    wait_for(
        lambda: the_study(box, files).attempts > before + 1,  # type: ignore[attr-defined]
        what="two tries after the loss",
        tick=lambda: clock.advance(5),
    )
    study = the_study(box, files)
    assert study.revision == 1 and study.state == "queued"  # type: ignore[attr-defined]
    assert "send the study again" in study.last_error  # type: ignore[attr-defined]
    assert sorted(_uploads(hub, study)) == [0]  # nothing registered under 1 without the file

    storescu(LOOPBACK, box.dicom.port, files[2:], aet="PACS3")
    assert box.index.conflicts() == []
    assert source_ae_title(box.spool.absolute(gone)) == "PACS3"
    study = _delivered(box, clock, files)
    assert study.revision == 1
    _assert_hub_holds_once(hub, box, study, files)


def test_a_study_the_hub_holds_every_part_of_completes_without_the_lost_file(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Every part at the hub and only the commit missing: nothing needs the lost file, so the
    revision is committed as registered and keeps its number (no second upload)."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTH", n=3)
    upload_fails_at(box, clock, files, "commit")
    lose_file(box, files[0])

    box = enrolled_box(hub)
    study = _delivered(box, clock, files)
    assert study.revision == 0
    assert sorted(_uploads(hub, study)) == [0]


def test_a_kept_copy_of_another_study_does_not_fill_the_lost_file(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """conflicts/ also holds what a PACS sent under a held UID in another study (a UID
    clash). Such a copy is not this study's instance: the lost file waits for a copy of its
    own, and the clash stays kept for review."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTX", n=2)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[0])

    box = enrolled_box(hub)
    clash = dcmread(files[0])
    clash.StudyInstanceUID = generate_uid()
    clashing = tmp_path / "clash.dcm"
    clash.save_as(clashing)
    storescu(LOOPBACK, box.dicom.port, [clashing], aet="OTHER")
    (kept,) = box.index.conflicts()
    before = the_study(box, files).attempts  # type: ignore[attr-defined]
    wait_for(
        lambda: the_study(box, files).attempts > before + 1,  # type: ignore[attr-defined]
        what="two tries after the loss",
        tick=lambda: clock.advance(5),
    )
    assert not box.spool.absolute(gone).exists()
    assert box.index.conflicts() == [kept]
    assert the_study(box, files).revision == 1  # type: ignore[attr-defined]

    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS2")
    study = _delivered(box, clock, files)
    _assert_hub_holds_once(hub, box, study, files)
    assert box.index.conflicts() == [kept]


def test_only_a_part_the_hub_lacks_makes_a_lost_file_a_new_revision() -> None:
    """The read of one part failed and a file is gone: the revision is renumbered only if a
    part the hub does not hold needs a lost file. A lost file all of whose parts the hub
    holds needs nothing more from the box (the failed read was of a file back meanwhile)."""

    def instance(uid: str, size: int) -> UploadInstance:
        return UploadInstance(uid, "1.9", "1.2", "CT", f"objects/{uid}.dcm", size, None)

    a, b, c = instance("1.1", 5), instance("1.2", 10), instance("1.3", 5)
    plan = stream.plan([a, b, c], part_size=4)  # a: parts 0-1, b: 1-3, c: 3-4
    assert not lost.needs_lost_part(plan, [0, 1, 2, 3], [b])
    assert lost.needs_lost_part(plan, [0, 1, 3], [b])
    assert not lost.needs_lost_part(plan, [0, 1], [a])
    assert lost.needs_lost_part(plan, [0, 1, 2, 3], [c])


def test_a_copy_naming_another_patient_never_takes_the_lost_files_place(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The PACS sends the lost instance again under another patient (an edit, a merge):
    put in the file's place it would make the study name two patients, and give the hub
    another patient's image for this one's account. It is kept for review, unmarked, both
    while the study is hashed and after it was registered afresh; a copy for the study's
    own patient then completes it."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTP", n=2)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[0])

    box = enrolled_box(hub)
    other = dcmread(files[0])
    other.PatientID, other.PatientName = "SOMEONE-ELSE", "Else^Someone"
    elsewhere = tmp_path / "else.dcm"
    other.save_as(elsewhere)
    storescu(LOOPBACK, box.dicom.port, [elsewhere], aet="PACS2")  # while hashed
    before = the_study(box, files).attempts  # type: ignore[attr-defined]
    wait_for(
        lambda: the_study(box, files).attempts > before + 1,  # type: ignore[attr-defined]
        what="two tries after the loss",
        tick=lambda: clock.advance(5),
    )
    assert the_study(box, files).revision == 1  # type: ignore[attr-defined]
    storescu(LOOPBACK, box.dicom.port, [elsewhere], aet="PACS2")  # and once unhashed
    assert not box.spool.absolute(gone).exists()
    kept = box.index.conflicts()
    assert len(kept) == 2 and not any(box.spool.kept_for_lost(c.path) for c in kept)

    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS3")
    study = _delivered(box, clock, files)
    _assert_hub_holds_once(hub, box, study, files)
    assert dcmread(box.spool.absolute(gone)).PatientID == "LOSTP"


def test_the_latest_kept_copy_is_taken_and_a_file_back_meanwhile_is_left_as_it_is(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Two copies kept for the lost file: the later one is taken (the older stays for
    review). And a file a copy sent again restored while the uplink looked is left as the
    receiver made it, its row with it (else the row would take the kept copy's size over
    the receiver's file, and the hub would refuse every stream)."""
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "LOSTL", n=2)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[0])

    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS2")
    storescu(LOOPBACK, box.dicom.port, files[:1], aet="PACS3")
    older, latest = sorted(box.index.conflicts(), key=lambda c: c.id)
    assert latest.calling_ae == "PACS3"
    study = _delivered(box, clock, files)
    assert source_ae_title(box.spool.absolute(gone)) == "PACS3"
    assert box.index.conflicts() == [older]
    _assert_hub_holds_once(hub, box, study, files)

    # The file is back (as a restore leaves it): a kept copy is not put over it.
    (instance,) = [
        i
        for i in box.index.upload_instances(study.id)
        if i.path == gone  # type: ignore[attr-defined]
    ]
    upload = box.index.upload_study(study.id)  # type: ignore[attr-defined]
    assert upload is not None
    assert lost.adopt_conflict(box.index, box.spool, upload, instance, clock.time()) == ""
    (again,) = [i for i in box.index.upload_instances(study.id) if i.path == gone]  # type: ignore[attr-defined]
    assert again.size == box.spool.absolute(gone).stat().st_size
    assert source_ae_title(box.spool.absolute(gone)) == "PACS3"
    assert box.index.conflicts() == [older]


def test_the_very_bytes_acknowledged_go_back_whatever_patient_they_name(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """A study's row holds its first instance's patient. The lost instance wrote the name in
    capitals, left out the birth date and carries an older Patient ID: its copy sent again,
    the very bytes acknowledged and hashed for the hub, goes back in its place (a review
    found a check on the patient refusing it for ever), and the revision the hub knows
    completes under its own number."""
    files = make_ct_series(tmp_path / "LOSTS", n=2, rows=64, cols=64, patient_id="LOSTS")
    second = dcmread(files[1])
    second.PatientName = str(second.PatientName).upper()
    second.PatientBirthDate = ""
    second.PatientID = "LOSTS-OLD"
    second.save_as(files[1])
    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files)
    upload_fails_at(box, clock, files, "put_part")
    gone = lose_file(box, files[1])

    box = enrolled_box(hub)
    storescu(LOOPBACK, box.dicom.port, files[1:])  # the same sender, the same bytes
    assert box.spool.absolute(gone).exists()
    assert box.index.conflicts() == []
    study = _delivered(box, clock, files)
    assert study.revision == 0
    assert sorted(_uploads(hub, study)) == [0]


def test_only_a_patient_id_both_name_and_differ_is_another_patient() -> None:
    row_id = "P-1"
    assert Demographics(patient_id="P-2").other_patient(row_id)
    assert not Demographics(patient_id="P-1 ").other_patient(row_id)  # DICOM's padding
    assert not Demographics(patient_id="").other_patient(row_id)  # the copy names none
    assert not Demographics(patient_id="P-2").other_patient("")  # the study row names none
    assert not Demographics(patient_id="P-1", patient_name="OTHER^NAME").other_patient(row_id)
