"""The acceptor against peers that break the upper layer protocol: nothing half-stored."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance
from afra.dicom import dimse
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import RawPeer, store_command
from tests.dicomgen import dataset_offset, make_instance
from tests.peers import echoscu

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
ABORT = 0x07


def spool_is_clean(box: Appliance) -> bool:
    return not list(box.spool.tmp_dir.iterdir()) and not list(
        (box.spool.root / "objects").rglob("*.dcm")
    )


def test_peer_vanishing_mid_object_leaves_nothing(
    box: Appliance, tmp_path: Path, raw_peer: PeerFactory
) -> None:
    path = make_instance(tmp_path / "a.dcm", pixel_bytes=64 * 1024)
    ds = dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()[dataset_offset(path) :]
    peer = raw_peer(box.dicom.port)
    assert peer.associate(CT) == 0x02  # A-ASSOCIATE-AC
    peer.p_data(store_command(CT, ds.SOPInstanceUID), command=True, last=True)
    peer.p_data(data[: len(data) // 2], command=False, last=False)
    peer.close()
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
    assert peer.associate(CT) == 0x02
    peer.p_data(store_command(CT, ds.SOPInstanceUID), command=True, last=True)
    kind, _ = peer.read_pdu()  # the box gives up on the silent peer with an A-ABORT
    assert kind == ABORT
    wait_for(lambda: spool_is_clean(box), timeout=10, what="tmp/ empty, nothing kept")


def test_pdu_larger_than_negotiated_is_aborted(make_box: BoxFactory, raw_peer: PeerFactory) -> None:
    box = make_box(dicom={"max_pdu": 16384})
    peer = raw_peer(box.dicom.port)
    assert peer.associate(CT) == 0x02
    peer.sock.sendall(struct.pack(">BBI", 0x04, 0, 10_000_000))
    kind, body = peer.read_pdu()
    assert kind == ABORT and body[3] == 0x06  # invalid PDU parameter value


def test_data_before_association_is_aborted(box: Appliance, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    peer.p_data(b"\0" * 10, command=True, last=True)
    kind, _ = peer.read_pdu()
    assert kind == ABORT


def test_pdv_on_a_context_never_accepted_is_aborted(box: Appliance, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    assert peer.associate(CT) == 0x02
    peer.p_data(store_command(CT, "1.2.3"), command=True, last=True, context_id=9)
    kind, _ = peer.read_pdu()
    assert kind == ABORT


def test_unsupported_command_gets_unrecognized_operation(
    box: Appliance, raw_peer: PeerFactory
) -> None:
    peer = raw_peer(box.dicom.port)
    assert peer.associate(CT) == 0x02
    find = store_command(CT, "1.2.3")
    # Turn the C-STORE-RQ into a C-FIND-RQ (0x0020) with no data set.
    find = find.replace(struct.pack("<H", dimse.C_STORE_RQ), struct.pack("<H", 0x0020), 1)
    find = find.replace(
        struct.pack("<HHI", 0, 0x0800, 2) + struct.pack("<H", 0),
        struct.pack("<HHI", 0, 0x0800, 2) + struct.pack("<H", dimse.NO_DATA_SET),
    )
    peer.p_data(find, command=True, last=True)
    kind, body = peer.read_pdu()
    assert kind == 0x04
    response = dimse.decode_command(body[6:])
    assert response.command_field == 0x8020
    assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x11\x02" in body  # (0000,0900) = 0x0211


def test_unknown_calling_ae_at_raw_level(make_box: BoxFactory, raw_peer: PeerFactory) -> None:
    box = make_box(
        dicom={"allow_any_peer": False, "peers": [{"ae_title": "PACS", "host": "127.0.0.1"}]}
    )
    peer = raw_peer(box.dicom.port, calling="INTRUDER")
    assert peer.associate(CT) == 0x03  # A-ASSOCIATE-RJ


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01"])
def test_non_dicom_bytes_are_refused(box: Appliance, garbage: bytes, raw_peer: PeerFactory) -> None:
    peer = raw_peer(box.dicom.port)
    peer.sock.sendall(garbage)
    peer.sock.settimeout(5)
    reply = b""
    try:
        while chunk := peer.sock.recv(100):
            reply += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    assert reply == b"" or reply[0] == ABORT
    assert echoscu("127.0.0.1", box.dicom.port).returncode == 0


def test_flood_from_unknown_addresses_leaves_room_for_peers(make_box: BoxFactory) -> None:
    import socket

    box = make_box(
        dicom={
            "allow_any_peer": False,
            "peers": [{"ae_title": "PACS", "host": "127.0.0.1/32"}],
            "acse_timeout": 2,
        }
    )
    flood = [
        socket.create_connection(("127.0.0.1", box.dicom.port), source_address=("127.0.0.5", 0))
        for _ in range(20)
    ]
    try:
        time.sleep(0.3)
        closed = 0
        for s in flood:
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 12  # only a small pool of unconfigured addresses is served
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
    flood: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while b"listening" not in log.read_bytes():
            assert time.monotonic() < deadline and box.poll() is None, log.read_text()
            time.sleep(0.1)
        for _ in range(60):  # more than the box has descriptors for
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1)
        for s in flood:
            s.close()
        flood.clear()
        time.sleep(4)  # the half-open ones time out (acse_timeout)
        assert echoscu("127.0.0.1", port).returncode == 0
        assert b"cannot accept a DICOM connection" in log.read_bytes()
    finally:
        for s in flood:
            s.close()
        box.terminate()
        box.wait(timeout=30)
