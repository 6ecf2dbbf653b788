"""The Storage and Verification SCP, driven by DCMTK's storescu/echoscu and hostile senders."""

from __future__ import annotations

import logging
import shutil
import socket
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE

from afra.app import Appliance, build_appliance
from tests.conftest import BoxFactory, make_config, wait_for
from tests.dicom.conftest import (
    LOOPBACK,
    UNRECOGNIZED_PDU,
    FillingDisk,
    provider_abort,
    refusal,
    send_raw,
    until_closed,
)
from tests.dicomgen import dataset_bytes_hash, make_ct_series, make_instance
from tests.peers import echoscu, storescu


def stored_path(box: Appliance, sent: Path) -> Path:
    ds = dcmread(sent, stop_before_pixels=True)
    return box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))


def object_files(box: Appliance) -> list[Path]:
    return sorted((box.spool.root / "objects").rglob("*.dcm"))


def test_echo_from_echoscu(box: Appliance) -> None:
    result = echoscu(LOOPBACK, box.dicom.port)
    assert result.returncode == 0


def test_series_from_storescu_stored_byte_for_byte(box: Appliance, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "series", n=12, rows=64, cols=64)
    storescu(LOOPBACK, box.dicom.port, files)
    studies = box.index.studies()
    assert [(s.instance_count, s.state, s.revision) for s in studies] == [(12, "received", 0)]
    assert len(object_files(box)) == 12
    for sent in files:
        kept = stored_path(box, sent)
        assert dataset_bytes_hash(kept) == dataset_bytes_hash(sent)
        raw = kept.read_bytes()
        assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"
        assert dcmread(kept).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    ds = dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPInstanceUID not in "".join(str(p) for p in object_files(box))
    assert studies[0].patient_id == ds.PatientID
    # The temp file an association keeps open for its next C-STORE goes when it ends.
    wait_for(lambda: not list(box.spool.tmp_dir.iterdir()), timeout=10, what="tmp/ empty")


def _encapsulated(path: Path, ts: str) -> Path:
    """An instance in a compressed transfer syntax; the box must not decode the pixels."""
    make_instance(path, transfer_syntax=ExplicitVRLittleEndian, pixel_bytes=64 * 64 * 2)
    ds = dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8 not really a codestream \xff\xd9" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


PROPOSE = {
    DeflatedExplicitVRLittleEndian: ["-xd"],
    JPEGBaseline8Bit: ["-xy"],
    JPEGLosslessSV1: ["-xs"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
    RLELossless: ["-xr"],
}


@pytest.mark.parametrize(
    "ts",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
    ],
)
def test_transfer_syntaxes_kept_as_sent(box: Appliance, tmp_path: Path, ts: str) -> None:
    path = tmp_path / "one.dcm"
    if ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        make_instance(path, transfer_syntax=ts, pixel_bytes=32 * 32 * 2)
    else:
        _encapsulated(path, ts)
    # Make storescu propose the file's own syntax first, so it sends the bytes unchanged.
    result = storescu(LOOPBACK, box.dicom.port, [path], extra=PROPOSE.get(ts, []))
    assert result.returncode == 0
    kept = stored_path(box, path)
    assert dcmread(kept, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    assert dataset_bytes_hash(kept) == dataset_bytes_hash(path)


def test_duplicate_kept_once(
    box: Appliance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_instance(tmp_path / "a.dcm")
    storescu(LOOPBACK, box.dicom.port, [path])
    with caplog.at_level(logging.INFO, logger="afra.receive"):
        storescu(LOOPBACK, box.dicom.port, [path])
    assert len(object_files(box)) == 1
    assert box.index.studies()[0].instance_count == 1
    assert "duplicate instance" in caplog.text
    assert box.index.conflicts() == []


def test_different_payload_same_uid_kept_as_conflict(box: Appliance, tmp_path: Path) -> None:
    first = make_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.3.4.5.6.7", seed=1)
    second = make_instance(tmp_path / "b.dcm", sop_instance_uid="1.2.3.4.5.6.7", seed=2)
    assert dataset_bytes_hash(first) != dataset_bytes_hash(second)
    storescu(LOOPBACK, box.dicom.port, [first])
    storescu(LOOPBACK, box.dicom.port, [second])
    assert dataset_bytes_hash(stored_path(box, first)) == dataset_bytes_hash(first)
    conflicts = box.index.conflicts()
    assert len(conflicts) == 1
    assert dataset_bytes_hash(box.spool.absolute(conflicts[0].path)) == dataset_bytes_hash(second)


def test_unknown_calling_ae_rejected(make_box: BoxFactory) -> None:
    box = make_box(
        dicom={"allow_any_peer": False, "peers": [{"ae_title": "MODALITY", "host": "127.0.0.1"}]}
    )
    refused = echoscu(LOOPBACK, box.dicom.port, aet="STRANGER", check=False)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert echoscu(LOOPBACK, box.dicom.port, aet="MODALITY").returncode == 0


def test_known_ae_from_unknown_address_rejected(make_box: BoxFactory) -> None:
    box = make_box(
        dicom={"allow_any_peer": False, "peers": [{"ae_title": "MODALITY", "host": "127.0.0.1/32"}]}
    )
    # rejected-permanent, service-user, calling-AE-title-not-recognized
    assert refusal(box.dicom.port, "MODALITY", source="127.0.0.2") == (1, 1, 3)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    assert assoc.is_established
    assoc.release()


def test_association_limit(make_box: BoxFactory) -> None:
    box = make_box(dicom={"max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    assert first.is_established
    try:
        # rejected-transient, service-provider (presentation), local-limit-exceeded
        assert refusal(box.dicom.port, "HOLDER") == (2, 3, 2)
    finally:
        first.release()


def test_disk_below_floor_answers_out_of_resources(make_box: BoxFactory, tmp_path: Path) -> None:
    box = make_box(storage={"min_free_mb": 10**9})
    path = make_instance(tmp_path / "a.dcm")
    result = storescu(LOOPBACK, box.dicom.port, [path], check=False, extra=["-v"])
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr + result.stdout
    assert object_files(box) == [] and box.index.studies() == []
    # The association's spare temp file goes when the association ends, which may be a
    # moment after storescu has exited.
    wait_for(lambda: box.dicom.open_associations == 0, timeout=10, what="the association ended")
    assert list(box.spool.tmp_dir.iterdir()) == []
    assert echoscu(LOOPBACK, box.dicom.port).returncode == 0


def test_disk_filling_while_an_object_arrives_answers_out_of_resources_first(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    """Room when the C-STORE began, none once it has arrived: 0xA700 before any other check."""
    root = tmp_path / "box"
    # 4 KB above the floor: room at the command; the object itself (~8 KB) takes it below.
    disk = FillingDisk(root, 4096, floor_mb=1)
    box = make_box(root, usage=disk, storage={"min_free_mb": 1})
    assert disk(root).free >= disk.floor  # room when the C-STORE begins
    # An invalid UID as well: conformance.md checks the floor first, so this is not 0xC212.
    path = make_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.03.4", pixel_bytes=8192)
    assert send_raw(box.dicom.port, path) == 0xA700
    assert object_files(box) == [] and box.index.studies() == []
    assert box.index.quarantine() == []
    wait_for(lambda: list(box.spool.tmp_dir.iterdir()) == [], timeout=10, what="tmp/ empty")
    disk.headroom = 2 * 2**20  # room again
    good = make_instance(tmp_path / "b.dcm", pixel_bytes=8192)
    assert send_raw(box.dicom.port, good) == 0x0000
    assert len(object_files(box)) == 1


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("../../../../etc/passwd", "traversal"),
        ("1." + "2" * 120, "oversized"),
        ("1.2.03.4", "leading zero"),
    ],
)
def test_invalid_instance_uid_refused_and_quarantined(
    box: Appliance, tmp_path: Path, uid: str, why: str
) -> None:
    path = make_instance(tmp_path / "bad.dcm", sop_instance_uid=uid)
    if len(uid) > 64:
        # pynetdicom will not put an oversized UID in a command: it travels in the data set.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the UID we mean to send
            ds = dcmread(path)
            ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
            dcmwrite(path, ds, enforce_file_format=False)
    status = send_raw(box.dicom.port, path)
    assert status == 0xC212, why
    assert object_files(box) == [] and box.index.studies() == []
    [entry] = box.index.quarantine()
    assert entry.status == 0xC212 and "not a valid DICOM UID" in entry.reason
    assert entry.path.startswith("quarantine/") and ".." not in entry.path
    assert box.spool.absolute(entry.path).is_file()
    assert not (tmp_path.parent / "etc").exists()


def test_truncated_dataset_refused(box: Appliance, tmp_path: Path) -> None:
    path = make_instance(tmp_path / "t.dcm", pixel_bytes=64 * 64 * 2)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    assert send_raw(box.dicom.port, path) == 0xC210
    [entry] = box.index.quarantine()
    assert "truncated" in entry.reason
    assert object_files(box) == []


def test_dataset_of_another_sop_class_refused(box: Appliance, tmp_path: Path) -> None:
    path = make_instance(tmp_path / "mr.dcm", sop_class=MRImageStorage)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # the command will say CT
    dcmwrite(path, ds, enforce_file_format=False)
    assert send_raw(box.dicom.port, path) == 0xA900
    [entry] = box.index.quarantine()
    assert "differs from the C-STORE command" in entry.reason


def test_plain_http_on_dicom_port(box: Appliance, tmp_path: Path) -> None:
    with socket.create_connection((LOOPBACK, box.dicom.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: afra\r\n\r\n")  # not DICOM, on purpose
        reply = until_closed(s)
    assert b"HTTP" not in reply
    # "G" is no PDU type: an A-ABORT (unrecognised PDU), then the close.
    assert reply == provider_abort(UNRECOGNIZED_PDU)
    path = make_instance(tmp_path / "after.dcm")
    storescu(LOOPBACK, box.dicom.port, [path])
    assert len(object_files(box)) == 1


def test_restart_resumes_from_disk(tmp_path: Path, clock: object) -> None:
    data = tmp_path / "box"
    config = make_config(data)
    box = build_appliance(config, clock=clock)  # type: ignore[arg-type]
    box.start()
    files = make_ct_series(tmp_path / "s", n=5, rows=32, cols=32)
    storescu(LOOPBACK, box.dicom.port, files)
    box.close()
    # A power cut: the index is lost, a receive was half written.
    for p in data.glob("index.sqlite*"):
        p.unlink()
    (data / "tmp" / "partial.dcm").write_bytes(b"\0" * 100)
    stray = data / "objects" / "zz" / "junk.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not dicom")
    box = build_appliance(config, clock=clock)  # type: ignore[arg-type]
    box.start()
    try:
        report = box.startup
        assert (report.removed_partial, report.indexed_orphans) == (1, 5)
        assert report.unreadable_orphans == 1 and stray.exists()
        assert box.index.studies()[0].instance_count == 5
        storescu(LOOPBACK, box.dicom.port, files)  # all duplicates now
        assert box.index.studies()[0].instance_count == 5
    finally:
        box.close()
    shutil.rmtree(data)


def test_receive_commits_lost_to_a_power_cut_are_redone_from_the_files(
    tmp_path: Path, clock: object
) -> None:
    # The index commits a received instance without waiting for the disk (the file and its
    # name were flushed before the success): a power cut may undo the index's last commits,
    # never the files. Here the index goes back to its copy from before the second study.
    data = tmp_path / "box"
    config = make_config(data)
    first = make_ct_series(tmp_path / "a", n=3, rows=32, cols=32)
    second = make_ct_series(tmp_path / "b", n=4, rows=32, cols=32)
    box = build_appliance(config, clock=clock)  # type: ignore[arg-type]
    box.start()
    storescu(LOOPBACK, box.dicom.port, first)
    box.close()
    saved = tmp_path / "index-before"
    saved.mkdir()
    for p in data.glob("index.sqlite*"):
        shutil.copy2(p, saved / p.name)
    box = build_appliance(config, clock=clock)  # type: ignore[arg-type]
    box.start()
    storescu(LOOPBACK, box.dicom.port, second)
    box.close()
    for p in data.glob("index.sqlite*"):
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, data / p.name)
    box = build_appliance(config, clock=clock)  # type: ignore[arg-type]
    box.start()
    try:
        assert box.startup.indexed_orphans == 4 and box.startup.missing_files == []
        counts = sorted(s.instance_count for s in box.index.studies())
        assert counts == [3, 4]
        # Who sent them is told again from the files (the self-test's clean-up and the audit
        # records go by it): the same AE title as the rows that were not lost.
        senders = box.index._db.execute("SELECT DISTINCT calling_ae FROM instances").fetchall()
        assert len(senders) == 1 and senders[0][0].strip()
        for path in second:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            found = box.index.find_instance(uid)
            assert found is not None
            assert dataset_bytes_hash(box.spool.absolute(found.path)) == dataset_bytes_hash(path)
    finally:
        box.close()


def test_a_temp_file_that_cannot_be_made_is_out_of_resources_and_the_next_one_works(
    make_box: BoxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next object's temp file is made ahead, on another thread; when that fails (and
    # the second try too), the C-STORE is answered out-of-resources and nothing is kept.
    box = make_box()
    files = [make_instance(tmp_path / f"{n}.dcm", seed=n) for n in range(4)]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(files[0]).Status == 0x0000
        wait_for(lambda: list(box.spool.tmp_dir.iterdir()), what="the next temp file made")
        real = box.spool.new_tmp_path
        monkeypatch.setattr(box.spool, "new_tmp_path", lambda: tmp_path / "gone" / "x.part")
        statuses = [int(assoc.send_c_store(path).Status) for path in files[1:3]]
        monkeypatch.setattr(box.spool, "new_tmp_path", real)
        statuses.append(int(assoc.send_c_store(files[3]).Status))
        # files[1] had its file already; files[2]'s could not be made, nor made again.
        assert statuses == [0x0000, 0xA700, 0x0000]
    finally:
        assoc.release()
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    assert [box.index.find_instance(uid) is not None for uid in uids] == [True, True, False, True]
    wait_for(lambda: not list(box.spool.tmp_dir.iterdir()), what="tmp/ emptied after release")


def test_ipv4_peer_on_dual_stack_listener(make_box: BoxFactory) -> None:
    box = make_box(
        dicom={
            "bind": "::",
            "allow_any_peer": False,
            "peers": [{"ae_title": "MODALITY", "host": "127.0.0.1"}],
        }
    )
    assert echoscu(LOOPBACK, box.dicom.port, aet="MODALITY").returncode == 0


def test_same_data_set_from_another_sender_is_a_duplicate(box: Appliance, tmp_path: Path) -> None:
    path = make_instance(tmp_path / "a.dcm")
    storescu(LOOPBACK, box.dicom.port, [path], aet="FIRST")
    storescu(LOOPBACK, box.dicom.port, [path], aet="SECOND")  # different file meta, same data
    assert box.index.conflicts() == [] and len(object_files(box)) == 1


def test_address_in_use_is_a_clear_error(box: Appliance, tmp_path: Path) -> None:
    from afra.errors import ServiceError

    other = build_appliance(make_config(tmp_path / "other", dicom={"port": box.dicom.port}))
    try:
        with pytest.raises(ServiceError, match=r"check dicom\.bind and dicom\.port"):
            other.start()
    finally:
        other.close()
