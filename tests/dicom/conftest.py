"""Helpers for the DICOM tests: a raw sender that can send what storescu refuses to."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config

LOOPBACK = "127.0.0.1"


@contextmanager
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's bytes as they are, without decoding them first."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


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


class RawPeer:
    """A DICOM peer that sends exactly the bytes a test wants (built with pynetdicom's PDUs)."""

    def __init__(self, port: int, *, calling: str = "RAWPEER", timeout: float = 10.0) -> None:
        import socket

        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.calling = calling

    def associate(self, abstract: str, ts: str = "1.2.840.10008.1.2.1") -> int:
        """Send an A-ASSOCIATE-RQ with one context (ID 1); return the reply's PDU type."""
        from pynetdicom.pdu import A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
        from pynetdicom.presentation import build_context

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = self.calling
        primitive.called_ae_title = "AFRA"
        cx = build_context(abstract, [ts])
        cx.context_id = 1
        primitive.presentation_context_definition_list = [cx]
        item = MaximumLengthNotification()
        item.maximum_length_received = 16384
        primitive.user_information = [item]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())
        kind, _body = self.read_pdu()
        return kind

    def read_pdu(self) -> tuple[int, bytes]:
        import struct

        header = self._exact(6)
        kind, _, length = struct.unpack(">BBI", header)
        return kind, self._exact(length)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("box closed the connection")
            data += chunk
        return data

    def p_data(self, payload: bytes, *, command: bool, last: bool, context_id: int = 1) -> None:
        import struct

        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
        self.sock.sendall(struct.pack(">BBI", 0x04, 0, len(item)) + item)

    def close(self) -> None:
        self.sock.close()


def store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """An encoded C-STORE-RQ command set (with a data set to follow)."""
    import struct

    from afra.dicom import dimse

    def element(tag: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HHI", 0, tag, len(value)) + value

    body = b"".join(
        (
            element(0x0002, sop_class.encode()),
            element(0x0100, struct.pack("<H", dimse.C_STORE_RQ)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, sop_instance.encode()),
        )
    )
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body
