"""Reading what the index needs from a received file: a few header tags, never pixel data.

The file is walked element by element with large values skipped (pydicom's deferred read), so
the cost does not grow with the object's size; the walk also proves the object is whole (no
element runs past the end of what arrived).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import RE_VALID_UID, UID

from afra.errors import InvalidInstanceError
from afra.store.records import Demographics

# Statuses of PS3.4 Annex B (storage) the box answers with.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210  # undecodable or truncated data set
STATUS_INVALID_UID = 0xC212  # a UID that breaks PS3.5 section 9 (syntax or length)

MAX_UID_LENGTH = 64
DEFLATED = "1.2.840.10008.1.2.1.99"
_DEFER_SIZE = 1024
SOP_CLASS_UID, SOP_INSTANCE_UID, MODALITY = 0x00080016, 0x00080018, 0x00080060
STUDY_UID, SERIES_UID = 0x0020000D, 0x0020000E
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying tags of one instance; demographics are converted only when asked for."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    modality: str = ""
    _dataset: Any = field(default=None, repr=False, compare=False)

    def demographics(self) -> Demographics:
        ds = self._dataset
        if ds is None:
            return Demographics()
        return Demographics(
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_phone=_text(ds, "PatientTelephoneNumbers"),
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
            study_description=_text(ds, "StudyDescription"),
            referring_physician=_text(ds, "ReferringPhysicianName"),
        )


def is_valid_uid(value: object) -> bool:
    """A UID by PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and RE_VALID_UID.match(value) is not None
    )


def check_uid(value: object, what: str) -> str:
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidInstanceError(
            f"{what} {shown} is not a valid DICOM UID (digits and dots, at most 64 characters)",
            status=STATUS_INVALID_UID,
        )
    return str(value)


def _text(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional tag does not make the instance unusable
        return ""
    if value is None:
        return ""
    return str(value).strip()[:256]


def _raw_text(ds: Any, tag: int) -> str:
    """A short string element's text, without pydicom's value conversion (hot path)."""
    element = ds.get_item(tag, keep_deferred=True)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return "" if value is None else str(value).strip("\0 ")


# pydicom inflates a deflated data set whole, in memory: one that inflates past this is
# refused before it is read (a deflate bomb of 1 MiB took the parser to 2 GiB).
MAX_INFLATED = 64 * 2**20  # four header workers at once stay within a Pi's memory


def _check_inflated_size(path: Path) -> None:
    """Refuse a deflated data set that would inflate past MAX_INFLATED, counting it a chunk
    at a time. The data set starts after the file meta, whose group length is its first
    element (as the box itself writes it: dimse.part10_header)."""
    with path.open("rb") as fp:
        head = fp.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            return  # not the layout the box writes: pydicom's own checks decide
        fp.seek(144 + int.from_bytes(head[140:144], "little"))
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while chunk := fp.read(1 << 16):
            try:
                while chunk:
                    total += len(inflate.decompress(chunk, 1 << 20))
                    if total > MAX_INFLATED:
                        raise InvalidInstanceError(
                            f"deflated data set inflates to more than {MAX_INFLATED >> 20} MiB; "
                            "the box does not take it",
                            status=STATUS_CANNOT_UNDERSTAND,
                        )
                    chunk = inflate.unconsumed_tail
            except zlib.error:
                return  # broken deflate data: pydicom says so, with its reason
            if inflate.eof:
                return


def _from_file(path: Path) -> Any:
    size = os.path.getsize(path)
    try:
        if read_file_meta_info(path).get("TransferSyntaxUID") == DEFLATED:
            _check_inflated_size(path)
        ds = dcmread(path, defer_size=_DEFER_SIZE)
        last = ds.get_item(_last_tag(ds), keep_deferred=True) if len(ds) else None
    except _DECODE_ERRORS as exc:
        raise InvalidInstanceError(
            f"data set cannot be decoded: {exc}", status=STATUS_CANNOT_UNDERSTAND
        ) from None
    if last is None:
        raise InvalidInstanceError("data set is empty", status=STATUS_CANNOT_UNDERSTAND)
    # A deflated data set is inflated in memory: offsets are not file offsets there.
    if ds.file_meta.get("TransferSyntaxUID") != DEFLATED:
        end = _end_of(last)
        if end is not None and end > size:
            raise _truncated(last, end, size)
    return ds


# What pydicom raises for bytes it cannot walk. struct.error included: the fuzz suite found
# it when a data set's first 64 KiB end inside an explicit VR element's 4-byte length (a valid
# object cut there too), which escaped as an "unexpected error" answered 0xA700.
_DECODE_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    OSError,
    NotImplementedError,
    struct.error,
)


def _last_tag(ds: Any) -> int:
    """The data set's highest tag, compared as plain ints (pydicom's Tag compares in Python)."""
    return max(ds.keys(), key=int)


def _end_of(element: Any) -> int | None:
    """Where a walked element's value ends, or None if that cannot be told (undefined length)."""
    value_tell = getattr(element, "value_tell", None)
    length = getattr(element, "length", None)
    if not isinstance(value_tell, int) or not isinstance(length, int):
        return None
    if length == _UNDEFINED_LENGTH:
        return None
    return value_tell + length


def _truncated(element: Any, end: int, size: int) -> InvalidInstanceError:
    length = getattr(element, "length", 0)
    return InvalidInstanceError(
        f"data set is truncated: element {Tag(element.tag)} needs {length} bytes, "
        f"only {max(size - (end - length), 0)} arrived",
        status=STATUS_CANNOT_UNDERSTAND,
    )


@dataclass(frozen=True)
class HeadParse:
    """A data set's first bytes, walked in memory while the rest is still arriving."""

    dataset: Any
    head_size: int
    transfer_syntax: str


def parse_head(head: bytes, transfer_syntax: str) -> HeadParse | None:
    """Walk the first bytes of a data set; None when only the file can tell (deflated, odd)."""
    ts = UID(transfer_syntax)
    if ts == DEFLATED or not ts.is_little_endian:
        return None
    try:
        ds = read_dataset(BytesIO(head), ts.is_implicit_VR, True, defer_size=_DEFER_SIZE)
    except Exception:  # any of pydicom's: the file walk gives the precise reason
        return None
    if not len(ds):
        return None
    return HeadParse(ds, len(head), transfer_syntax)


def header_from_head(parsed: HeadParse, data_size: int) -> InstanceHeader | None:
    """The header, if the walked head settles that the data set is whole; else None.

    It settles it when the walk reached an element (usually Pixel Data) whose value ends
    exactly where the received data ends, or when the whole data set was in the head.
    """
    ds = parsed.dataset
    last = ds.get_item(_last_tag(ds), keep_deferred=True)
    end = _end_of(last)
    if end is not None and end > data_size:
        raise _truncated(last, end, data_size)
    if end == data_size or (parsed.head_size >= data_size and end is not None):
        return _header_of(ds, parsed.transfer_syntax)
    return None


def read_header(path: Path) -> InstanceHeader:
    """Read the index's tags from a stored Part 10 file and check the object is whole.

    Raises InvalidInstanceError with the storage status to answer.
    """
    try:
        ds = _from_file(path)
        return _header_of(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
    except InvalidInstanceError:
        raise
    except Exception as exc:  # pydicom on hostile bytes raises what it meets
        # (the fuzz suite: TypeError, KeyError from a character set, struct.error): all of
        # it is a data set the box cannot read, answered 0xC210 and quarantined.
        raise InvalidInstanceError(
            f"data set cannot be decoded ({exc.__class__.__name__}: {exc})",
            status=STATUS_CANNOT_UNDERSTAND,
        ) from None


def source_ae_title(path: Path) -> str:
    """Who sent a stored file: the Source Application Entity Title (0002,0016) the box wrote
    into its file meta when it received it ("" when absent or unreadable)."""
    try:
        value = read_file_meta_info(path).get("SourceApplicationEntityTitle", "")
    except Exception:  # a file the header was read from: its meta is whole, but be sure
        return ""
    return str(value).strip()


def _header_of(ds: Any, ts: str) -> InstanceHeader:
    sop_class = _raw_text(ds, SOP_CLASS_UID)
    if not sop_class:
        raise InvalidInstanceError(
            "data set has no SOP Class UID (0008,0016)", status=STATUS_CANNOT_UNDERSTAND
        )
    return InstanceHeader(
        sop_class_uid=check_uid(sop_class, "SOP Class UID"),
        sop_instance_uid=check_uid(_raw_text(ds, SOP_INSTANCE_UID), "SOP Instance UID"),
        study_uid=check_uid(_raw_text(ds, STUDY_UID), "Study Instance UID"),
        series_uid=check_uid(_raw_text(ds, SERIES_UID), "Series Instance UID"),
        transfer_syntax=ts,
        modality=_raw_text(ds, MODALITY)[:16],
        _dataset=ds,
    )
