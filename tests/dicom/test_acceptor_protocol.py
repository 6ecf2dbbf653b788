"""The acceptor against peers that break the upper layer protocol: nothing half-stored.

Each test asserts the exact answer the box gives (the acceptor's code decides it: an A-ABORT
with the reason of the violation, an A-ASSOCIATE-RJ with its result, source and diagnostic,
then the close), built or decoded by pynetdicom (tests/dicom/conftest.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.dimse_messages import C_FIND_RQ, C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ

from afra.app import Appliance
from afra.dicom.acceptor import STAGING_BYTES
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import (
    INVALID_PARAMETER,
    NOT_SPECIFIED,
    UNEXPECTED_PDU,
    UNRECOGNIZED_PDU,
    RawPeer,
    closed_by_box,
    provider_abort,
    store_request,
)
from tests.dicomgen import dataset_offset, make_instance
from tests.peers import echoscu, open_server_connections

PeerFactory = Callable[..., RawPeer]


@pytest.fixture
def raw_peer() -> Iterator[PeerFactory]:
    peers: list[RawPeer] = []

    def connect(port: int, **kwargs: object) -> RawPeer:
        peer = RawPeer(port, **kwargs)  # type: ignore[arg-type]
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        peer.close()


CT = "1.2.840.10008.5.1.4.1.1.2"
UNRECOGNIZED_OPERATION = 0x0211


def spool_is_clean(box: Appliance) -> bool:
    return not list(box.spool.tmp_dir.iterdir()) and not list(
        (box.spool.root / "objects").rglob("*.dcm")
    )


def bytes_in_tmp(box: Appliance) -> int:
    return sum(p.stat().st_size for p in box.spool.tmp_dir.iterdir())


def test_peer_vanishing_mid_object_leaves_nothing(
    box: Appliance, tmp_path: Path, raw_peer: PeerFactory
) -> None:
    # Larger than the association's direct-write buffer, so half of it is on disk already.
    path = make_instance(tmp_path / "a.dcm", pixel_bytes=4 * STAGING_BYTES)
    ds = dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()[dataset_offset(path) :]
    peer = raw_peer(box.dicom.port)
    assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
    pdus = peer.message_pdus(store_request(CT, ds.SOPInstanceUID, data))
    assert len(pdus) >= 4  # the command, then the data set in fragments
    sent = pdus[: len(pdus) // 2]  # the command and the first fragments, never the last
    for pdu in sent:
        peer.send(pdu)
    fragments = sum(len(pdu.encode()) - 12 for pdu in sent[1:])  # less the PDU and PDV headers
    # The box is in the middle of the object (what it has written so far is in tmp/, all but
    # at most one buffer of it with direct writes) ...
    wait_for(
        lambda: bytes_in_tmp(box) >= fragments - STAGING_BYTES,
        timeout=10,
        what="the object half written",
    )
    peer.close()  # ... when the peer goes.
    wait_for(lambda: spool_is_clean(box), timeout=10, what="tmp/ empty, nothing kept")
    assert box.index.studies() == []
    assert echoscu("127.0.0.1", box.dicom.port).returncode == 0


def test_silent_peer_is_timed_out(
    make_box: BoxFactory, tmp_path: Path, raw_peer: PeerFactory
) -> None:
    box = make_box(dicom={"network_timeout": 30, "dimse_timeout": 1})
    path = make_instance(tmp_path / "a.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    peer = raw_peer(box.dicom.port)
    assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
    peer.send_message(store_request(CT, ds.SOPInstanceUID))  # the command; its data set never
    # The box gives up on the silent peer after dimse_timeout: an A-ABORT, then the close.
    assert peer.rest() == provider_abort(NOT_SPECIFIED)
    wait_for(lambda: spool_is_clean(box), timeout=10, what="tmp/ empty, nothing kept")


def test_pdu_larger_than_negotiated_is_aborted(make_box: BoxFactory, raw_peer: PeerFactory) -> None:
    box = make_box(dicom={"max_pdu": 16384})
    peer = raw_peer(box.dicom.port)
    assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
    # Malformed on purpose, so written out: a P-DATA-TF header claiming 10 MB (no encoder
    # makes a PDU the peer was told it may not send).
    peer.sock.sendall(struct.pack(">BBI", 0x04, 0, 10_000_000))
    assert peer.rest() == provider_abort(INVALID_PARAMETER)


def test_data_before_association_is_aborted(box: Appliance, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    peer.p_data(b"\0" * 10, command=True, last=True)
    assert peer.rest() == provider_abort(UNEXPECTED_PDU)


def test_pdv_on_a_context_never_accepted_is_aborted(box: Appliance, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
    peer.send_message(store_request(CT, "1.2.3"), context_id=9)
    assert peer.rest() == provider_abort(UNEXPECTED_PDU)


def test_unsupported_command_gets_unrecognized_operation(
    box: Appliance, raw_peer: PeerFactory
) -> None:
    peer = raw_peer(box.dicom.port)
    assert isinstance(peer.associate(CT), A_ASSOCIATE_AC)
    find = C_FIND()  # a C-FIND-RQ with no identifier: its command set says no data set follows
    find.MessageID = 7
    find.AffectedSOPClassUID = CT
    find.Priority = 0x0000
    request = C_FIND_RQ()
    request.primitive_to_message(find)
    peer.send_message(request)
    answer = peer.receive_message()
    assert isinstance(answer, C_FIND_RSP)
    command = answer.command_set
    assert (command.MessageIDBeingRespondedTo, command.Status) == (7, UNRECOGNIZED_OPERATION)
    assert command.CommandDataSetType == 0x0101  # and no data set with it


def test_unknown_calling_ae_at_raw_level(make_box: BoxFactory, raw_peer: PeerFactory) -> None:
    box = make_box(
        dicom={"allow_any_peer": False, "peers": [{"ae_title": "PACS", "host": "127.0.0.1"}]}
    )
    peer = raw_peer(box.dicom.port, calling="INTRUDER")
    answer = peer.associate(CT)
    assert isinstance(answer, A_ASSOCIATE_RJ)
    # rejected-permanent, by the service user, calling AE title not recognised
    assert (answer.result, answer.source, answer.reason_diagnostic) == (0x01, 0x01, 0x03)
    assert peer.rest() == b""  # then the box hangs up


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01"])
def test_non_dicom_bytes_are_refused(box: Appliance, garbage: bytes, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    peer.sock.sendall(garbage)  # not DICOM at all, on purpose: written out
    # The first byte is no PDU type: an A-ABORT (unrecognised PDU), then the close.
    assert peer.rest() == provider_abort(UNRECOGNIZED_PDU)
    assert echoscu("127.0.0.1", box.dicom.port).returncode == 0


# dicom.max_associations 8: one address holds at most 4 associations and 2 more connections
# still negotiating (docs/conformance.md 2.2.1.2.2); addresses no peer entry covers share 12.
PER_ADDRESS_CONNECTIONS = 6


def test_flood_from_unknown_addresses_leaves_room_for_peers(make_box: BoxFactory) -> None:
    import socket

    box = make_box(
        dicom={
            "allow_any_peer": False,
            "peers": [{"ae_title": "PACS", "host": "127.0.0.1/32"}],
            # ARTIM long enough that only the box's limits close connections here
            "acse_timeout": 60,
        }
    )
    flood = [
        socket.create_connection(("127.0.0.1", box.dicom.port), source_address=("127.0.0.5", 0))
        for _ in range(20)
    ]
    try:
        # Only a small pool of unconfigured addresses is served: the rest closed at once.
        wait_for(
            lambda: sum(closed_by_box(s) for s in flood) == len(flood) - PER_ADDRESS_CONNECTIONS,
            timeout=10,
            what="the connections beyond the address's share closed",
        )
        assert not any(closed_by_box(s) for s in flood[:PER_ADDRESS_CONNECTIONS])
        assert echoscu("127.0.0.1", box.dicom.port, aet="PACS").returncode == 0
    finally:
        for s in flood:
            s.close()


def test_listener_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    import resource
    import socket
    import subprocess
    import sys

    from tests.peers import free_port

    port = free_port()
    config = tmp_path / "afra.toml"
    config.write_text(
        f'[box]\ndata_dir = "{tmp_path / "box"}"\n'
        f'[dicom]\nbind = "127.0.0.1"\nport = {port}\nallow_any_peer = true\n'
        "max_associations = 64\nacse_timeout = 3\n[storage]\nmin_free_mb = 0\n"
    )
    log = tmp_path / "box.log"

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    with log.open("wb") as out:
        box = subprocess.Popen(
            [sys.executable, "-m", "afra.cli", "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=few_descriptors,
        )

    def said(text: bytes) -> bool:
        assert box.poll() is None, f"the box exited with {box.returncode}:\n{log.read_text()}"
        return text in log.read_bytes()

    flood: list[socket.socket] = []
    try:
        wait_for(lambda: said(b"listening"), timeout=30, what="the box to listen")
        for _ in range(60):  # more than the box has descriptors for
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_for(
            lambda: said(b"cannot accept a DICOM connection"),
            timeout=30,
            what="the box to run out of descriptors",
        )
        for s in flood:
            s.close()
        flood.clear()
        # The box drops every one of them: those it holds and those still in its accept queue.
        wait_for(
            lambda: open_server_connections(port) == 0,
            timeout=30,
            what="the box to close the flood's connections",
        )
        assert echoscu("127.0.0.1", port).returncode == 0
        assert b"cannot accept a DICOM connection" in log.read_bytes()
    finally:
        for s in flood:
            s.close()
        box.terminate()
        box.wait(timeout=30)
