"""Helpers for the DICOM tests: a raw peer that sends what storescu refuses to, the box's answers
read as a peer reads them, and a disk that fills as the box writes.

What goes on the wire is encoded, and what comes back decoded, by pynetdicom (its PDUs, its
DIMSE messages, its data set encoder), never by code of the tests' own: the oracle is the
implementation every other DICOM peer is checked against, not a second reading of the
standard that could share the firmware's mistakes. A test that means to send malformed bytes
writes them out itself and says so.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    P_DATA_TF,
    PDU,
    PDU_TYPES,
)
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_P_ABORT, P_DATA, MaximumLengthNotification
from pynetdicom.presentation import build_context

from afra.health import DiskUsage

LOOPBACK = "127.0.0.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
PEER_MAX_PDU = 16384  # what a RawPeer says it receives (and the PDUs it sends at most)

# PDU type -> pynetdicom's class for it (pynetdicom's own table, inverted).
PDU_CLASSES: dict[int, type[PDU]] = {kind: cls for cls, kind in PDU_TYPES.items()}

# A-ABORT reasons a service provider gives (PS3.8 Table 9-26).
NOT_SPECIFIED, UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x00, 0x01, 0x02, 0x06


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's bytes as they are, without decoding them first."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def store_one(port: int, path: Path, calling: str = "MODALITY") -> int:
    """Send one file to the box with pynetdicom, on an association of its own; its status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate(LOOPBACK, port, ae_title="AFRA")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dcmread(path)).Status)
    finally:
        assoc.release()


def send_raw(
    port: int, path: Path, *, aet: str = "RAWSCU", context_class: str | None = None
) -> int:
    """C-STORE one file's bytes as they are (even a broken file); return the status."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    abstract = context_class or str(meta.MediaStorageSOPClassUID)
    ae = AE(ae_title=aet)
    ae.add_requested_context(abstract, [str(meta.TransferSyntaxUID)])
    assoc = ae.associate(LOOPBACK, port, ae_title="AFRA")
    assert assoc.is_established, "the box refused the association"
    try:
        with chunked_send(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the bad UIDs we mean to send
            status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


# -- what the box answers ---------------------------------------------------------------------


def provider_abort(reason: int) -> bytes:
    """The A-ABORT a DICOM service provider sends for `reason`, as pynetdicom encodes it."""
    primitive = A_P_ABORT()
    primitive.provider_reason = reason
    pdu = A_ABORT_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the box sends until it closes the connection; fails if it stays open.

    The close is an end of stream, or a reset when the box closed with bytes of ours still
    unread (the kernel then resets the connection, after delivering what the box had sent: on
    Linux those bytes are still read first). Either way the box has hung up."""
    sock.settimeout(timeout)
    got = bytearray()
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(
            f"the box kept the connection open for {timeout:g} s after sending {bytes(got)!r}"
        ) from None
    return bytes(got)


def closed_by_box(sock: socket.socket) -> bool:
    """Whether the box has closed this connection (end of stream, or reset), without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


# -- a peer that sends exactly the PDUs a test wants ------------------------------------------


def associate_rq(
    calling: str, abstract: str, ts: str = EXPLICIT_VR_LE, *, called: str = "AFRA"
) -> A_ASSOCIATE_RQ:
    """An A-ASSOCIATE-RQ proposing one presentation context (ID 1)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(abstract, [ts])
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    item = MaximumLengthNotification()
    item.maximum_length_received = PEER_MAX_PDU
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu


def store_request(
    sop_class: str, sop_instance: str, data: bytes = b"", message_id: int = 1
) -> C_STORE_RQ:
    """A C-STORE-RQ (its command set says a data set follows) carrying `data` as it is."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 0x0000
    primitive.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


class RawPeer:
    """A DICOM peer that sends exactly the PDUs a test wants, encoded by pynetdicom, and reads
    the box's answers as pynetdicom decodes them."""

    def __init__(
        self,
        port: int,
        *,
        calling: str = "RAWPEER",
        timeout: float = 10.0,
        source: str | None = None,
    ) -> None:
        self.sock = socket.create_connection(
            (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.calling = calling

    def send(self, pdu: PDU) -> None:
        self.sock.sendall(pdu.encode())

    def associate(self, abstract: str, ts: str = EXPLICIT_VR_LE) -> PDU:
        """Propose one context (ID 1) for `abstract` in `ts`; return the box's answer."""
        self.send(associate_rq(self.calling, abstract, ts))
        return self.receive()

    def p_data(self, payload: bytes, *, command: bool, last: bool, context_id: int = 1) -> None:
        """One P-DATA-TF holding one PDV: a fragment of a command set or of a data set."""
        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, bytes([control]) + payload))
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        self.send(pdu)

    def message_pdus(self, message: DIMSEMessage, context_id: int = 1) -> list[P_DATA_TF]:
        """A DIMSE message as the P-DATA-TF PDUs pynetdicom sends it in (command, data set)."""
        pdus = []
        for primitive in message.encode_msg(context_id, PEER_MAX_PDU):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu)
        return pdus

    def send_message(self, message: DIMSEMessage, context_id: int = 1) -> None:
        for pdu in self.message_pdus(message, context_id):
            self.send(pdu)

    def receive(self) -> PDU:
        """The box's next PDU, decoded by pynetdicom (ConnectionError if it hung up first)."""
        header = self._exact(6)
        kind, _reserved, length = struct.unpack(">BBI", header)  # the framing: type, length
        pdu = PDU_CLASSES[kind]()
        pdu.decode(header + self._exact(length))
        return pdu

    def receive_message(self) -> DIMSEMessage:
        """The box's next whole DIMSE message (its command set, and its data set if any)."""
        message = DIMSEMessage()
        while True:
            pdu = self.receive()
            assert isinstance(pdu, P_DATA_TF), f"expected a P-DATA-TF, the box sent {pdu}"
            if message.decode_msg(pdu.to_primitive()):
                return message

    def rest(self, timeout: float = 10.0) -> bytes:
        """What the box still sends before it closes the connection (see until_closed)."""
        return until_closed(self.sock, timeout)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("box closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


VERIFICATION = "1.2.840.10008.1.1"


def refusal(
    port: int, calling: str, *, source: str = LOOPBACK
) -> tuple[int | None, int | None, int | None]:
    """Propose a Verification association the box is to refuse, from `source`; the (result,
    source, reason) of its A-ASSOCIATE-RJ, as pynetdicom decodes it.

    A raw peer, not pynetdicom's requestor: that one now and then reports a quick rejection
    as an abort. Its ACSE thread looks at the socket after its DUL thread has already read the
    A-ASSOCIATE-RJ and closed the connection (pynetdicom 3.0.4, `_negotiate_as_requestor`;
    about 1 in 1500 rejections on loopback, and once in CI).
    """
    peer = RawPeer(port, calling=calling, source=source)
    try:
        answer = peer.associate(VERIFICATION)
    finally:
        peer.close()
    assert isinstance(answer, A_ASSOCIATE_RJ), f"expected A-ASSOCIATE-RJ, the box sent {answer}"
    return answer.result, answer.source, answer.reason_diagnostic


def command_set(message: DIMSEMessage) -> bytes:
    """A message's command set as it travels (implicit VR little endian, PS3.7 6.3.1)."""
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return bytes(encoded)


# -- a disk that fills ------------------------------------------------------------------------


class FillingDisk:
    """The storage device as `usage` sees it (build_appliance's seam, also the storage check's):
    `headroom` bytes above the floor before anything is received, less every byte the box holds
    in tmp/ and objects/. So the box parks just above the floor the way a real card does: an
    object, once written, takes it below; once removed, the disk is back above it. A test may
    change `headroom` (studies purged, a card swapped)."""

    TOTAL = 64 * 2**20

    def __init__(self, root: Path, headroom: int, *, floor_mb: int) -> None:
        self.root = root
        self.headroom = headroom
        self.floor = floor_mb * 2**20

    def held(self) -> int:
        held = 0
        for part in ("tmp", "objects"):
            for p in (self.root / part).rglob("*"):
                with contextlib.suppress(FileNotFoundError):  # moved or removed meanwhile
                    if p.is_file():
                        held += p.stat().st_size
        return held

    def __call__(self, _path: Path) -> DiskUsage:
        free = self.floor + self.headroom - self.held()
        return DiskUsage(self.TOTAL, self.TOTAL - free, free)
