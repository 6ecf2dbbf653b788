"""Associations served by receiving worker processes (dicom.receive_processes > 1): the same
files, index rows and statuses as in the main process; the limits, sightings and health stay
the main process's (afra.dicom.workers)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC

from afra.app import Appliance
from afra.dicom.acceptor import STAGING_BYTES
from afra.dicom.workers import ReceiveWorkers, process_count
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import LOOPBACK, RawPeer, refusal, store_request, until_closed
from tests.dicomgen import dataset_bytes_hash, make_ct_series, make_instance
from tests.peers import storescu

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
OUT_OF_RESOURCES = 0xA700
BUSY = (2, 3, 2)  # rejected-transient, service-provider (presentation), local-limit-exceeded


def workers_of(box: Appliance) -> ReceiveWorkers:
    handoff = box.dicom.handoff
    assert isinstance(handoff, ReceiveWorkers)
    return handoff


@pytest.fixture
def held() -> Iterator[list[Association]]:
    assocs: list[Association] = []
    yield assocs
    for assoc in assocs:
        if assoc.is_established:
            assoc.release()


def associate(port: int, aet: str, source: str = LOOPBACK) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT)
    ae.acse_timeout = 30
    ae.dimse_timeout = 30
    return ae.associate(LOOPBACK, port, ae_title="AFRA", bind_address=(source, 0))


def in_a_worker(box: Appliance, held: list[Association], aet: str) -> Association:
    """An association the main process passed to the worker: one it keeps itself is held open
    first (the least busy process serves the next, the main process on a tie)."""
    workers = workers_of(box)
    before, kept = workers.handed_off, workers.in_process
    held.append(associate(box.dicom.port, "KEPT"))
    assert held[-1].is_established
    wait_for(lambda: workers.in_process == kept + 1, timeout=10, what="kept in the main process")
    assoc = associate(box.dicom.port, aet)
    held.append(assoc)
    assert assoc.is_established
    wait_for(lambda: workers.handed_off == before + 1, timeout=10, what="passed to the worker")
    return assoc


def test_process_count() -> None:
    assert process_count(3) == 3
    assert 1 <= process_count(0) <= min(4, len(os.sched_getaffinity(0)))


def test_one_process_has_no_workers(box: Appliance) -> None:
    assert box.dicom.handoff is None


def test_senders_at_once_stored_once_each_across_processes(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    box = make_box(dicom={"receive_processes": 2})
    workers = workers_of(box)
    assert len(workers.pids) == 1 and workers.ready_workers == 1
    series = [
        make_ct_series(tmp_path / f"s{n}", n=6, rows=64, cols=64, patient_id=f"P{n}", seed=n)
        for n in range(4)
    ]
    # Each series sent twice at once (8 associations): the copies are duplicates, one kept.
    threads = [
        threading.Thread(
            target=storescu, args=(LOOPBACK, box.dicom.port, files), kwargs={"aet": f"S{n}{k}"}
        )
        for n, files in enumerate(series)
        for k in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert workers.handed_off >= 1  # some associations were served by the worker
    studies = box.index.studies()
    assert sorted(s.instance_count for s in studies) == [6, 6, 6, 6]
    assert box.index.conflicts() == []
    for files in series:
        for sent in files:
            ds = dcmread(sent, stop_before_pixels=True)
            rel = box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
            assert dataset_bytes_hash(box.spool.absolute(rel)) == dataset_bytes_hash(sent)
    assert len(list((box.spool.root / "objects").rglob("*.dcm"))) == 24
    # Every sender's stores reach the wizard's sightings, whichever process served it.
    for n in range(4):
        wait_for(
            lambda n=n: all(
                (seen := box.dicom.sightings.get(f"S{n}{k}")) is not None and seen.stores == 6
                for k in range(2)
            ),
            timeout=10,
            what=f"sightings of S{n}*",
        )
    wait_for(lambda: box.dicom.open_associations == 0, timeout=10, what="all ended")


def test_worker_association_stores_echoes_and_is_counted(
    make_box: BoxFactory, tmp_path: Path, held: list[Association]
) -> None:
    box = make_box(dicom={"receive_processes": 2})
    assoc = in_a_worker(box, held, "WORKED")
    assert box.dicom.open_associations == 2  # the worker's association is counted here
    assert assoc.send_c_echo().Status == 0x0000
    wait_for(
        lambda: (s := box.dicom.sightings.get("WORKED")) is not None and s.last_echo_at,
        timeout=10,
        what="the echo's sighting",
    )
    path = make_instance(tmp_path / "a.dcm")
    assert assoc.send_c_store(dcmread(path)).Status == 0x0000
    assert box.index.studies()[0].instance_count == 1  # indexed before the answer
    wait_for(
        lambda: (s := box.dicom.sightings.get("WORKED")) is not None and s.stores == 1,
        timeout=10,
        what="the store's sighting",
    )
    assoc.release()
    wait_for(lambda: box.dicom.open_associations == 1, timeout=10, what="its occupancy released")


def test_limits_stay_global_with_workers(make_box: BoxFactory, held: list[Association]) -> None:
    # max 4: one address holds at most 2, whichever process serves them.
    box = make_box(dicom={"receive_processes": 2, "max_associations": 4})
    workers = workers_of(box)
    for _ in range(2):
        held.append(associate(box.dicom.port, "GREEDY", "127.0.0.21"))
        assert held[-1].is_established
    wait_for(lambda: workers.handed_off == 1, timeout=10, what="one in the worker")
    wait_for(lambda: workers.in_process == 1, timeout=10, what="one in the main process")
    assert refusal(box.dicom.port, "GREEDY", source="127.0.0.21") == BUSY
    for source in ("127.0.0.22", "127.0.0.23"):
        held.append(associate(box.dicom.port, "OTHER", source))
        assert held[-1].is_established
    # 4 open in all, 2 of them in the worker
    assert refusal(box.dicom.port, "OTHER", source="127.0.0.24") == BUSY
    wait_for(lambda: workers.handed_off == 2, timeout=10, what="two in the worker")
    assert box.dicom.open_associations == 4


def test_worker_refusal_for_space_reaches_health(
    make_box: BoxFactory, tmp_path: Path, held: list[Association]
) -> None:
    box = make_box(dicom={"receive_processes": 2})
    assoc = in_a_worker(box, held, "BROKEN")
    path = make_instance(tmp_path / "a.dcm", study_uid="1.2.3.4.1")
    ds = dcmread(path, stop_before_pixels=True)
    # The device refuses the move into objects/: a file stands where the study's folder goes.
    rel = box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    blocker = box.spool.absolute(rel).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    assert assoc.send_c_store(dcmread(path)).Status == OUT_OF_RESOURCES
    # Only the worker refused: the condition is its own (its source), told to the main process.
    assert not box.receiver.refusals.active
    wait_for(lambda: "receive-1" in floor_sources(box), timeout=10, what="the worker's disk_floor")
    assert box.index.studies() == []
    # The next instance stored there ends it.
    other = make_instance(tmp_path / "b.dcm", study_uid="1.2.3.4.2")
    assert assoc.send_c_store(dcmread(other)).Status == 0x0000
    wait_for(lambda: "receive-1" not in floor_sources(box), timeout=10, what="its end")
    assert [s.instance_count for s in box.index.studies()] == [1]


def floor_sources(box: Appliance) -> set[str]:
    return {r.source for r in box.health.reasons if r.condition == "disk_floor"}


def test_a_killed_worker_is_started_again(
    make_box: BoxFactory, tmp_path: Path, held: list[Association]
) -> None:
    box = make_box(dicom={"receive_processes": 2})
    workers = workers_of(box)
    assoc = in_a_worker(box, held, "CUT")
    (pid,) = workers.pids
    os.kill(pid, signal.SIGKILL)
    # Its association ends (nothing it had not answered was acknowledged) ...
    wait_for(lambda: box.dicom.open_associations == 1, timeout=10, what="its association ended")
    wait_for(lambda: not assoc.is_established, timeout=10, what="the peer sees it end")
    # ... and a new worker serves the next one.
    held.pop(0).release()  # the main process's own, so that the next goes to the worker
    wait_for(lambda: box.dicom.open_associations == 0, timeout=10, what="none open")
    wait_for(
        lambda: workers.ready_workers == 1 and workers.pids != [pid],
        timeout=60,
        what="a new worker",
    )
    path = make_instance(tmp_path / "b.dcm")
    again = in_a_worker(box, held, "AGAIN")
    assert again.send_c_store(dcmread(path)).Status == 0x0000
    assert box.index.studies()[0].instance_count == 1


def test_stopping_mid_object_in_a_worker_aborts_and_leaves_tmp_clean(make_box: BoxFactory) -> None:
    box = make_box(dicom={"receive_processes": 2})
    workers = workers_of(box)
    workers.main_takes_ties = False  # the lone association goes to the worker
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
        wait_for(lambda: workers.handed_off == 1, timeout=10, what="passed to the worker")
        # Half of it is more than the association buffers before it writes to the file.
        data = b"\x00" * (4 * STAGING_BYTES)
        command, *fragments = peer.message_pdus(
            store_request(CT, "1.2.826.0.1.3680043.8.498.3", data)
        )
        for pdu in (command, *fragments[: len(fragments) // 2]):
            peer.send(pdu)
        wait_for(
            lambda: sum(p.stat().st_size for p in box.spool.tmp_dir.iterdir()) > 0,
            timeout=10,
            what="the object half written in tmp/",
        )
        box.dicom.stop(grace=0)
        # The worker's A-ABORT (service user: the box stopping), whole, then the close ...
        abort = peer.receive()
        assert isinstance(abort, A_ABORT_RQ)
        assert abort.source == 0x00
        assert until_closed(peer.sock) == b""
        # ... and nothing half received left behind once the worker has stopped.
        assert not list(box.spool.tmp_dir.iterdir())
        assert workers.served_here == 0 and box.dicom.open_associations == 0
    finally:
        peer.close()


def test_a_worker_puts_back_a_file_gone_from_the_device(
    make_box: BoxFactory, tmp_path: Path, held: list[Association]
) -> None:
    """The copy sent again of an instance whose file had gone, through a worker: the main
    process records the copy (its restore is one of the index calls a worker may make), and
    the row takes the copy's size."""
    box = make_box(dicom={"receive_processes": 2})
    path = make_instance(tmp_path / "a.dcm")
    ds = dcmread(path)
    rel = box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    assoc = associate(box.dicom.port, "FIRST")
    held.append(assoc)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    first = dataset_bytes_hash(box.spool.absolute(rel))
    box.spool.absolute(rel).unlink()  # gone from the device
    again = in_a_worker(box, held, "SECOND-SENDER")  # another AE: the file meta is longer
    assert again.send_c_store(ds).Status == 0x0000
    restored = box.spool.absolute(rel)
    assert dataset_bytes_hash(restored) == first
    found = box.index.find_instance(ds.SOPInstanceUID)
    assert found is not None and found.size == restored.stat().st_size
    assert box.index.studies()[0].instance_count == 1
    assert box.index.studies()[0].bytes == restored.stat().st_size
    assert box.index.conflicts() == []
