"""A DICOMDIR (PS3.10 file-set, PS3.3 F.3 Basic Directory) built while instances arrive.

pydicom's FileSet stages a copy of every data set and searches its whole list on each add,
about 10 ms per instance and quadratic; a download of a large study would wait on it after
everything else is done. Here each instance gets its File ID at once, in pydicom's naming
(PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx), and the directory records come from pydicom's own
record definitions (`DIRECTORY_RECORDERS`); only the byte layout (the records' offsets) is
done here. Tests read the result back with pydicom's FileSet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS, _four_level_record_type
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from afra.dicom.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# File ID prefixes of the leaf record types, as pydicom names them.
_PREFIXES = {
    "IMAGE": "IM",
    "SR DOCUMENT": "SR",
    "ENCAP DOC": "EN",
    "PRESENTATION": "PR",
    "KEY OBJECT DOC": "KO",
    "WAVEFORM": "WV",
    "RAW DATA": "RD",
    "SPECTROSCOPY": "SP",
    "REGISTRATION": "RG",
    "FIDUCIAL": "FD",
    "MEASUREMENT": "MS",
    "SURFACE": "SF",
    "STEREOMETRIC": "SS",
    "RT DOSE": "RD",
    "RT STRUCTURE SET": "RS",
    "RT PLAN": "RP",
    "RT TREAT RECORD": "RX",
}

# Values a record needs when the data set lacks them (only the record gets them).
_DEFAULTS: dict[str, object] = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": 1,
    "InstanceNumber": 1,
    "ContentDate": "19000101",
    "ContentTime": "000000",
}

_FIRST = 0x00041200
_LAST = 0x00041202
_NEXT = 0x00041400
_LOWER = 0x00041420


@dataclass
class _Node:
    record: Dataset
    children: list[_Node] = field(default_factory=list)
    keys: dict[str, _Node] = field(default_factory=dict)
    offset: int = 0


def _record(kind: str, header: Dataset) -> Dataset:
    make = DIRECTORY_RECORDERS[kind]
    try:
        record = make(header)
    except (ValueError, KeyError, AttributeError):
        patched = Dataset()
        patched.update(header)
        for keyword, value in _DEFAULTS.items():
            if keyword not in patched or patched[keyword].VM == 0:
                setattr(patched, keyword, value)
        record = make(patched)
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    return record


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


class DicomDir:
    def __init__(self, file_set_id: str = "AFRA") -> None:
        self.file_set_id = file_set_id
        self.root = _Node(Dataset())

    def add(self, header: Dataset) -> str:
        """Record one instance (its header is enough); returns its File ID ("/"-separated).

        Raises ValueError when the data set cannot be described (no UIDs)."""
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not header.get(keyword):
                raise ValueError(f"the instance has no {keyword}")
        path: list[str] = []
        node = self.root
        for kind, key, prefix in (
            ("PATIENT", str(header.get("PatientID", "") or "UNKNOWN"), "PT"),
            ("STUDY", str(header.StudyInstanceUID), "ST"),
            ("SERIES", str(header.SeriesInstanceUID), "SE"),
        ):
            child = node.keys.get(key)
            if child is None:
                child = _Node(_record(kind, header))
                node.keys[key] = child
                node.children.append(child)
            path.append(f"{prefix}{node.children.index(child):06d}")
            node = child
        kind = _four_level_record_type(header)
        leaf = _record(kind, header)
        leaf.ReferencedFileID = [*path, f"{_PREFIXES.get(kind, 'IM')}{len(node.children):06d}"]
        leaf.ReferencedSOPClassUIDInFile = header.SOPClassUID
        leaf.ReferencedSOPInstanceUIDInFile = header.SOPInstanceUID
        syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
        if syntax:
            leaf.ReferencedTransferSyntaxUIDInFile = syntax
        node.children.append(_Node(leaf))
        return "/".join(leaf.ReferencedFileID)

    def _walk(self, node: _Node) -> list[_Node]:
        out: list[_Node] = []
        for child in node.children:
            out.append(child)
            out.extend(self._walk(child))
        return out

    def encode(self) -> bytes:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        prefix = bytes(fp.getvalue())

        nodes = self._walk(self.root)
        top = Dataset()
        top.FileSetID = self.file_set_id
        top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        top.FileSetConsistencyFlag = 0
        head_len = len(prefix) + len(_encode(top))
        # Sequence header: tag, "SQ", 2 reserved bytes, undefined length.
        offset = head_len + 12
        sizes = []
        for node in nodes:  # UL offsets have a fixed size: lengths do not depend on values
            node.offset = offset
            size = len(_encode(node.record))
            sizes.append(size)
            offset += 8 + size
        for parent in [self.root, *nodes]:
            for i, child in enumerate(parent.children):
                nxt = parent.children[i + 1].offset if i + 1 < len(parent.children) else 0
                child.record.OffsetOfTheNextDirectoryRecord = nxt
                lower = child.children[0].offset if child.children else 0
                child.record.OffsetOfReferencedLowerLevelDirectoryEntity = lower
        if self.root.children:
            top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = self.root.children[
                0
            ].offset
            top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = self.root.children[
                -1
            ].offset
        out = bytearray(prefix)
        out += _encode(top)
        out += struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)
        for node, size in zip(nodes, sizes, strict=True):
            body = _encode(node.record)
            assert len(body) == size
            out += struct.pack("<HHI", 0xFFFE, 0xE000, size) + body
        out += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return bytes(out)
