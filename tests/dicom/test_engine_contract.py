"""What a real PACS sends, taken as it sends it: transfer syntax choice, private SOP classes,
Big Endian, malformed lengths; and the protocol around the hot path (release, stop, a peer
that trickles). pynetdicom and DCMTK are the peers; pynetdicom encodes and decodes the wire."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
)
from pynetdicom import AE
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import A_RELEASE, P_DATA
from pynetdicom.sop_class import Verification

from afra.app import Appliance
from afra.dicom.acceptor import HEAD_BYTES
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import (
    LOOPBACK,
    RawPeer,
    associate_rq,
    send_raw,
    store_request,
    until_closed,
)
from tests.dicomgen import dataset_bytes_hash, dataset_offset, make_instance
from tests.peers import storescu

CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage (private)
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # a query/retrieve class, never storage


def _negotiate(box: Appliance, abstract: str, syntaxes: list[str]) -> tuple[int, str | None]:
    """Propose a context (beside Verification, so the association stands whatever its
    result); the box's result for it and the transfer syntax it took."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(abstract, syntaxes)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    try:
        assert assoc.is_established
        contexts = assoc.accepted_contexts + assoc.rejected_contexts
        (cx,) = [c for c in contexts if c.abstract_syntax == abstract]
        return int(cx.result), (str(cx.transfer_syntax[0]) if cx.result == 0 else None)
    finally:
        assoc.release()


def _stored_file(box: Appliance, sop_instance_uid: str) -> Path:
    found = box.index.find_instance(sop_instance_uid)
    assert found is not None, f"{sop_instance_uid} is not in the index"
    return box.spool.absolute(found.path)


# -- transfer syntaxes --------------------------------------------------------------------


def test_the_first_syntax_the_peer_proposes_is_taken(make_box: BoxFactory) -> None:
    box = make_box()
    # A PACS holding JPEG 2000 proposes it first: it stays JPEG 2000 (no decompression,
    # a third of the bytes over the uplink), whatever order the box would have chosen.
    assert _negotiate(box, CTImageStorage, [JPEG2000, ExplicitVRLittleEndian]) == (0, JPEG2000)
    assert _negotiate(box, CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]) == (
        0,
        ImplicitVRLittleEndian,
    )


def test_the_accepted_list_is_a_setting(make_box: BoxFactory) -> None:
    box = make_box(dicom={"accepted_transfer_syntaxes": [ExplicitVRLittleEndian, JPEG2000Lossless]})
    assert _negotiate(box, CTImageStorage, [JPEG2000, ExplicitVRLittleEndian]) == (
        0,
        ExplicitVRLittleEndian,
    )
    assert _negotiate(box, CTImageStorage, [JPEGBaseline8Bit]) == (4, None)  # not supported


def test_a_compressed_object_is_stored_as_the_pacs_sent_it(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    box = make_box()
    sent = make_instance(tmp_path / "j2k.dcm", transfer_syntax=JPEG2000Lossless)
    storescu(LOOPBACK, box.dicom.port, [sent], propose="-xv")  # JPEG 2000 lossless first
    uid = str(dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
    stored = _stored_file(box, uid)
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert dataset_bytes_hash(stored) == dataset_bytes_hash(sent)


def test_big_endian_from_an_old_archive_is_stored_as_sent(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    box = make_box()
    sent = make_instance(tmp_path / "be.dcm", transfer_syntax=ExplicitVRBigEndian)
    storescu(LOOPBACK, box.dicom.port, [sent], propose="-xb")
    uid = str(dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
    stored = _stored_file(box, uid)
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        ExplicitVRBigEndian
    )
    assert dataset_bytes_hash(stored) == dataset_bytes_hash(sent)
    (study,) = box.index.studies()
    assert study.patient_id == "SYN0002"  # its header was read, in its byte order


def test_a_bad_accepted_syntax_is_a_config_error(make_box: BoxFactory) -> None:
    from afra.errors import ConfigError
    from tests.conftest import make_config

    with pytest.raises((ConfigError, ValueError), match="the box can store as it arrives"):
        make_config(Path("/nonexistent"), dicom={"accepted_transfer_syntaxes": ["1.2.3"]})


# -- SOP classes --------------------------------------------------------------------------


def test_a_private_storage_class_is_taken_and_kept(make_box: BoxFactory, tmp_path: Path) -> None:
    box = make_box()
    assert _negotiate(box, CSA_NON_IMAGE, [ExplicitVRLittleEndian]) == (0, ExplicitVRLittleEndian)
    sent = make_instance(tmp_path / "csa.dcm", sop_class=CSA_NON_IMAGE, pixel_bytes=None)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CSA_NON_IMAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    try:
        status = assoc.send_c_store(sent)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    uid = str(dcmread(sent).SOPInstanceUID)
    assert dataset_bytes_hash(_stored_file(box, uid)) == dataset_bytes_hash(sent)


def test_unknown_classes_can_be_refused_and_other_services_always_are(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    closed = make_box(tmp_path / "closed", dicom={"accept_unknown_sop_classes": False})
    assert _negotiate(closed, CSA_NON_IMAGE, [ExplicitVRLittleEndian]) == (3, None)
    assert _negotiate(closed, CTImageStorage, [ExplicitVRLittleEndian])[0] == 0
    default = make_box(tmp_path / "default")
    assert _negotiate(default, STUDY_ROOT_FIND, [ExplicitVRLittleEndian]) == (3, None)
    assert default.index.studies() == []


# -- malformed data sets ------------------------------------------------------------------


def test_an_odd_length_data_set_is_refused_and_kept_aside(make_box: BoxFactory) -> None:
    box = make_box()
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        # (0010,0010) PN of length 3: an odd length, so an odd data set (PS3.5 7.1 forbids).
        odd = b"\x10\x00\x10\x00PN\x03\x00Ann"
        peer.send_message(store_request(CTImageStorage, "1.2.826.0.1.3680043.8.498.1", odd))
        answer = peer.receive_message()
        assert answer.command_set.Status == 0xC210
    finally:
        peer.close()
    (kept,) = box.index.quarantine()
    assert kept.status == 0xC210 and "odd length" in kept.reason
    assert box.index.studies() == []


# -- release, stop, a trickling peer --------------------------------------------------------


def _release_rq() -> A_RELEASE_RQ:
    pdu = A_RELEASE_RQ()
    pdu.from_primitive(A_RELEASE())
    return pdu


def test_after_the_release_the_box_waits_for_the_peer_to_close(make_box: BoxFactory) -> None:
    box = make_box(dicom={"acse_timeout": 2})
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        peer.send(_release_rq())
        assert isinstance(peer.receive(), A_RELEASE_RP)
        # Sta13: its place in the pool is free at once; the connection stays for the peer
        # to close, and is closed by the box only when ARTIM runs out.
        wait_for(lambda: box.dicom.open_associations == 0, what="the association's place freed")
        peer.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.sock.recv(1)  # still open: nothing to read, no end of stream
        peer.sock.setblocking(True)
        started = time.monotonic()
        assert until_closed(peer.sock, timeout=15) == b""  # closed without another word
        assert time.monotonic() - started < 15
    finally:
        peer.close()


def test_a_peer_that_closes_after_the_release_ends_it_cleanly(
    make_box: BoxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    box = make_box(dicom={"acse_timeout": 60})
    peer = RawPeer(box.dicom.port)
    assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
    peer.send(_release_rq())
    assert isinstance(peer.receive(), A_RELEASE_RP)
    peer.close()
    # The box's thread ends with the peer's close, not 60 s later.
    wait_for(lambda: not box.dicom._connections, timeout=10, what="the connection let go")
    assert "did not close the connection" not in caplog.text


def test_stopping_aborts_open_associations(make_box: BoxFactory) -> None:
    box = make_box()
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        wait_for(lambda: box.dicom.open_associations == 1, what="the association admitted")
        box.dicom.stop(grace=0)
        abort = peer.receive()
        assert isinstance(abort, A_ABORT_RQ)
        assert abort.source == 0x00  # the service user: the box itself, stopping
        assert until_closed(peer.sock) == b""
    finally:
        peer.close()


def test_a_peer_trickling_a_message_is_dropped_after_the_dimse_timeout(
    make_box: BoxFactory,
) -> None:
    box = make_box(dicom={"dimse_timeout": 1, "network_timeout": 1})
    peer = RawPeer(box.dicom.port)
    stop = threading.Event()

    def trickle(data: bytes) -> None:
        # The slow link is what is tested: one byte every 0.1 s, always within the timeout
        # of the previous byte, never a whole PDU within the DIMSE timeout.
        for byte in data:
            if stop.wait(0.1):
                return
            try:
                peer.sock.send(bytes([byte]))
            except OSError:
                return

    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        (first, *_rest) = peer.message_pdus(
            store_request(CTImageStorage, "1.2.826.0.1.3680043.8.498.2", b"\x00" * 4096)
        )
        sender = threading.Thread(target=trickle, args=(first.encode(),), daemon=True)
        started = time.monotonic()
        sender.start()
        answer = until_closed(peer.sock, timeout=20)
        took = time.monotonic() - started
        assert answer.startswith(b"\x07"), answer  # an A-ABORT, then the close
        assert took < 10, f"the box waited {took:.1f} s for a peer that never finished a PDU"
    finally:
        stop.set()
        peer.close()


# -- the A-ASSOCIATE-RQ's protocol version and called AE title -----------------------------


def test_a_protocol_version_without_bit_0_is_rejected(make_box: BoxFactory) -> None:
    box = make_box()
    peer = RawPeer(box.dicom.port)
    try:
        rq = associate_rq("RAWPEER", CTImageStorage)
        rq.protocol_version = 0x0002  # a version 2 that does not exist
        peer.send(rq)
        answer = peer.receive()
        assert isinstance(answer, A_ASSOCIATE_RJ)
        assert (answer.result, answer.source, answer.reason_diagnostic) == (1, 2, 2)
    finally:
        peer.close()


def test_contexts_without_a_transfer_syntax_are_rejected_and_the_rest_negotiated(
    make_box: BoxFactory,
) -> None:
    # Found by the fuzz suite: a context proposing no transfer syntax made pynetdicom's
    # negotiation raise, and the box dropped the connection without an answer.
    box = make_box()
    rq = associate_rq("RAWPEER", CTImageStorage)
    items = []
    for n, abstract in ((3, STUDY_ROOT_FIND), (5, Verification)):
        (item,) = [
            i
            for i in associate_rq("RAWPEER", abstract).variable_items
            if type(i).__name__ == "PresentationContextItemRQ"
        ]
        item.presentation_context_id = n
        items.append(item)
    rq.variable_items[2:2] = items
    for item in rq.variable_items[1:3]:  # CT and the query class: no transfer syntax left
        item.abstract_transfer_syntax_sub_items = item.abstract_transfer_syntax_sub_items[:1]
    peer = RawPeer(box.dicom.port)
    try:
        peer.send(rq)
        answer = peer.receive()
        assert isinstance(answer, A_ASSOCIATE_AC)
        results = {int(cx.context_id): int(cx.result) for cx in answer.presentation_context}
        assert results == {1: 2, 3: 2, 5: 0}
    finally:
        peer.close()


def test_any_called_ae_title_is_accepted_and_echoed(make_box: BoxFactory) -> None:
    # docs/conformance.md 2.2.1.4: the Called AE Title is not checked (a PACS configured
    # with an old title for the box still reaches it).
    box = make_box()
    peer = RawPeer(box.dicom.port)
    try:
        peer.send(associate_rq("RAWPEER", CTImageStorage, called="OLD_NAME"))
        answer = peer.receive()
        assert isinstance(answer, A_ASSOCIATE_AC)
        assert answer.called_ae_title.strip() == "OLD_NAME"
    finally:
        peer.close()


# -- how a message may be cut into PDVs and PDUs (pynetdicom's encoder cuts it) -------------


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(path) :]


def test_a_command_in_many_pdvs_and_many_pdvs_in_one_pdu(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    box = make_box()
    sent = make_instance(tmp_path / "split.dcm", pixel_bytes=20_000)
    ds = dcmread(sent, stop_before_pixels=True)
    message = store_request(CTImageStorage, str(ds.SOPInstanceUID), _dataset_bytes(sent))
    # pynetdicom cuts the command set into fragments of at most 26 bytes (a peer announcing a
    # 32-byte maximum PDU), then all of them travel in one P-DATA-TF: several PDVs, one PDU.
    pdvs = [item for p in message.encode_msg(1, 32) for item in p.presentation_data_value_list]
    assert sum(1 for _cx, value in pdvs if value[0] & 0x01) > 3  # the command set, cut up
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[cx, value] for cx, value in pdvs]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        peer.send(pdu)
        assert peer.receive_message().command_set.Status == 0x0000
    finally:
        peer.close()
    assert dataset_bytes_hash(_stored_file(box, str(ds.SOPInstanceUID))) == dataset_bytes_hash(sent)


def test_objects_in_one_write_of_many_pdus(make_box: BoxFactory, tmp_path: Path) -> None:
    # The box reads what has arrived, several PDUs at a time, through a buffer a little
    # larger than its largest PDU: 3 MiB in 16 KiB PDUs sent at once make PDUs straddle the
    # buffer's end again and again; a second C-STORE follows in the same write.
    box = make_box()
    big = make_instance(tmp_path / "big.dcm", pixel_bytes=3 * 2**20 + 4098)
    small = make_instance(tmp_path / "small.dcm", seed=3)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (big, small)]
    peer = RawPeer(box.dicom.port)
    try:
        assert isinstance(peer.associate(CTImageStorage), A_ASSOCIATE_AC)
        pdus = [
            pdu
            for n, (path, uid) in enumerate(zip((big, small), uids, strict=True), start=1)
            for pdu in peer.message_pdus(
                store_request(CTImageStorage, uid, _dataset_bytes(path), message_id=n)
            )
        ]
        assert len(pdus) > 190
        peer.sock.sendall(b"".join(pdu.encode() for pdu in pdus))
        answers = [peer.receive_message().command_set for _ in range(2)]
    finally:
        peer.close()
    assert [(a.MessageIDBeingRespondedTo, a.Status) for a in answers] == [(1, 0), (2, 0)]
    for path, uid in zip((big, small), uids, strict=True):
        assert dataset_bytes_hash(_stored_file(box, uid)) == dataset_bytes_hash(path)


def test_mixed_sop_classes_and_an_object_beyond_the_header_window(
    make_box: BoxFactory, tmp_path: Path
) -> None:
    box = make_box()
    big = make_instance(tmp_path / "ct.dcm", pixel_bytes=3 * HEAD_BYTES)  # past the 64 KiB head
    mr = make_instance(tmp_path / "mr.dcm", sop_class=MRImageStorage, modality="MR", seed=7)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    try:
        statuses = [int(assoc.send_c_store(path).Status) for path in (big, mr, big)]
    finally:
        assoc.release()
    assert statuses == [0, 0, 0]  # the second CT a duplicate, answered success and kept once
    for path in (big, mr):
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_hash(_stored_file(box, uid)) == dataset_bytes_hash(path)
    assert sum(s.instance_count for s in box.index.studies()) == 2


def test_a_deflated_data_set_of_odd_length_is_stored(make_box: BoxFactory, tmp_path: Path) -> None:
    # A deflated data set is a compressed byte stream: dcmconv +td writes it unpadded. storescu
    # pads it with one NUL on the wire; pynetdicom's chunked send passes it as it is. Neither
    # is a malformation: both are stored with success, as they arrived.
    box = make_box()
    for seed in range(40):
        plain = make_instance(tmp_path / f"plain{seed}.dcm", seed=seed, instance_number=seed + 1)
        deflated = tmp_path / f"deflated{seed}.dcm"
        subprocess.run(["dcmconv", "+td", str(plain), str(deflated)], check=True)
        if len(_dataset_bytes(deflated)) % 2:
            break
    else:
        pytest.fail("dcmconv made no odd-length deflated data set in 40 tries")
    uid = str(dcmread(deflated, stop_before_pixels=True).SOPInstanceUID)
    assert send_raw(box.dicom.port, deflated) == 0x0000
    assert _dataset_bytes(_stored_file(box, uid)) == _dataset_bytes(deflated)
