"""The few DIMSE wire formats the receive hot path reads and writes itself.

pynetdicom decodes every command set through pydicom Datasets, which costs milliseconds of
CPU per C-STORE (measured: see docs/ARCHITECTURE.md, "The receive path"). The box's SCP only
ever reads a C-STORE-RQ or C-ECHO-RQ command and writes their responses, so those small,
fixed structures (PS3.7 section 9.3, implicit VR little endian group 0000) are read and written
here; everything else about DICOM still comes from pydicom and pynetdicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from afra import __version__

# Command Field values (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
STATUS_UNRECOGNIZED_OPERATION = 0x0211

# AFRA's implementation identity (PS3.7 D.3.3.2); a UID under pydicom's example root,
# derived once from the product name.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.81398079509173083666379174886425534954"
IMPLEMENTATION_VERSION_NAME = f"AFRA_{__version__}"[:16]

MAX_COMMAND_BYTES = 65536

_TAGS = {
    0x0002: "affected_sop_class_uid",
    0x0100: "command_field",
    0x0110: "message_id",
    0x0700: "priority",
    0x0800: "data_set_type",
    0x1000: "affected_sop_instance_uid",
    0x1030: "move_originator_ae",
    0x1031: "move_originator_message_id",
}
_US = {0x0100, 0x0110, 0x0700, 0x0800, 0x1031}


class CommandError(ValueError):
    """A command set that cannot be read."""


@dataclass
class Command:
    command_field: int = 0
    message_id: int = 0
    priority: int = 0
    data_set_type: int = NO_DATA_SET
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    move_originator_ae: str = ""
    move_originator_message_id: int = 0

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Read a command set (implicit VR little endian, group 0000 only)."""
    view = memoryview(data)
    command = Command()
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 8:
            raise CommandError("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHI", view, offset)
        offset += 8
        if group != 0x0000:
            raise CommandError(f"command set holds an element of group {group:04X}")
        if length > end - offset:
            raise CommandError(f"command element (0000,{element:04X}) runs past the end")
        name = _TAGS.get(element)
        if name is not None:
            value = view[offset : offset + length]
            if element in _US:
                if length != 2:
                    raise CommandError(f"command element (0000,{element:04X}) is not a US")
                setattr(command, name, struct.unpack_from("<H", value)[0])
            else:
                setattr(command, name, bytes(value).decode("ascii", "replace").rstrip("\0 "))
        offset += length
    return command


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(element: int, text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b" "
    return struct.pack("<HHI", 0x0000, element, len(raw)) + raw


def encode_response(
    request: Command, response_field: int, status: int, error_comment: str = ""
) -> bytes:
    """A response command set (no data set) to `request`."""
    body = b"".join(
        (
            _element(0x0002, request.affected_sop_class_uid.encode("ascii", "replace")),
            _element(0x0100, struct.pack("<H", response_field)),
            _element(0x0120, struct.pack("<H", request.message_id)),
            _element(0x0800, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _text(0x0902, error_comment[:64]) if error_comment else b"",
            _element(0x1000, request.affected_sop_instance_uid.encode("ascii", "replace"))
            if request.affected_sop_instance_uid
            else b"",
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def _meta_element(element: int, vr: bytes, value: bytes, pad: bytes = b"\0") -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble (128 zero bytes), 'DICM' and the File Meta Information (PS3.10 7.1)."""
    elements = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")),
            _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "),
            _meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" ")
            if source_ae
            else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"\0" * 128 + b"DICM" + group_length + elements
