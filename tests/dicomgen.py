"""Synthetic DICOM generator for the tests and the benchmarks.

Everything here is deterministic: pixel data comes from a seeded numpy generator and, unless
``seed=None`` is passed, the UIDs are derived from the arguments with
``pydicom.uid.generate_uid(entropy_srcs=...)``. Two calls with the same arguments therefore
produce the same study, series and instance UIDs; pass a different ``seed`` (or ``study_uid``,
``patient_id``) to get a different study, or ``seed=None`` for fresh random UIDs.

Nothing here validates what it writes on purpose: ``make_instance`` can put any string into
SOPInstanceUID (``"../../etc/passwd"``, a 200 character value, ...) so that the receiving side
can be tested against hostile input.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.config
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "DEFAULT_PIXEL_BYTES",
    "dataset_bytes_hash",
    "dataset_offset",
    "make_ct_series",
    "make_instance",
    "make_large_object",
    "make_report",
    "no_write_validation",
    "sha256_of",
]

DEFAULT_PIXEL_BYTES = 64 * 64 * 2
"""Pixel payload of :func:`make_instance` by default: one 64x64 16-bit frame."""

_STUDY_DATE = "20240115"
_STUDY_TIME = "101500"
_CHUNK = 4 * 1024 * 1024

# Explicit VR: these VRs have 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


@contextlib.contextmanager
def no_write_validation() -> Iterator[None]:
    """Temporarily let pydicom assign and write invalid values (no warning, no exception).

    pydicom validates on assignment with the *reading* mode and on write with the *writing*
    mode, so both are relaxed. Not thread-safe (pydicom's settings are global).
    """
    settings = pydicom.config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _uid(seed: int | None, *parts: object) -> UID:
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=["afra-dicomgen", str(seed), *(str(p) for p in parts)])


def _file_meta(sop_class: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "AFRA_DICOMGEN"
    return meta


def _patient_study(
    ds: Dataset,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    accession_number: str,
    modality: str,
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = _STUDY_DATE
    ds.StudyTime = _STUDY_TIME
    ds.SeriesDate = _STUDY_DATE
    ds.SeriesTime = _STUDY_TIME
    ds.ContentDate = _STUDY_DATE
    ds.ContentTime = _STUDY_TIME
    ds.StudyID = "1"
    ds.StudyDescription = "AFRA synthetic study"
    ds.SeriesDescription = "AFRA synthetic series"
    ds.SeriesNumber = 1
    ds.AccessionNumber = accession_number
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.Modality = modality
    ds.Manufacturer = "AFRA dicomgen"
    ds.InstitutionName = "Synthetic Imaging Center"


def _mono16(ds: Dataset, rows: int, cols: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def _ct_geometry(ds: Dataset, index: int, rows: int, cols: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-(cols / 2.0), -(rows / 2.0), -float(index)]
    ds.SliceLocation = -float(index)
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.7, 0.7]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400


def _base_image(rows: int, cols: int, seed: int) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """A 12-bit CT-like slice: air around an elliptical body, organs, and noise (deterministic).

    Stored values are HU + 1024 (RescaleIntercept -1024): air about 24, soft tissue about
    1064, a denser core; noise of a few HU in air and about 12 HU in tissue, as a CT scanner
    gives. Pure noise would be unlike any patient and would make any codec look useless.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    ny = (yy - rows / 2) / max(rows / 2, 1)
    nx = (xx - cols / 2) / max(cols / 2, 1)
    body = (nx / 0.8) ** 2 + (ny / 0.6) ** 2 <= 1.0
    core = (nx / 0.3) ** 2 + ((ny - 0.1) / 0.25) ** 2 <= 1.0
    image = np.full((rows, cols), 24.0)
    image[body] = 1064.0
    image[core] = 1300.0
    noise = rng.normal(0.0, 1.0, size=(rows, cols))
    image += np.where(body, 12.0, 2.0) * noise
    clipped: np.ndarray[Any, np.dtype[np.uint16]] = np.clip(image, 0, 4095).astype(np.uint16)
    return clipped


def _slice_pixels(
    base: np.ndarray[Any, np.dtype[np.uint16]], index: int
) -> np.ndarray[Any, np.dtype[np.uint16]]:
    # A cheap, different-per-slice transform of the base image.
    rolled = np.roll(base, (index * 7) % max(base.shape[1], 1), axis=1)
    return (rolled + np.uint16(index % 64)) & np.uint16(0x0FFF)


def _grid_for(pixel_bytes: int) -> tuple[int, int]:
    """Rows, columns of a 16-bit frame holding at least ``pixel_bytes`` (square when possible)."""
    n_pixels = max(1, math.ceil(pixel_bytes / 2))
    side = math.isqrt(n_pixels)
    if side * side == n_pixels and side <= 0xFFFF:
        return side, side
    cols = min(512, n_pixels)
    return math.ceil(n_pixels / cols), cols


def make_ct_series(
    out_dir: Path,
    n: int = 300,
    rows: int = 512,
    cols: int = 512,
    study_uid: str | None = None,
    patient_id: str = "SYN0001",
    *,
    patient_name: str = "Synthetic^Patient",
    accession_number: str = "ACC0001",
    series_uid: str | None = None,
    seed: int | None = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write an ``n``-slice CT series (16-bit, 12 bits stored) into ``out_dir``.

    Files are named ``CT000001.dcm`` ...; returns their paths sorted. All files share one
    study and one series; InstanceNumber runs 1..n. Uncompressed transfer syntaxes only.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    ts = UID(transfer_syntax)
    if ts.is_compressed:
        raise ValueError("make_ct_series writes uncompressed transfer syntaxes only")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = (patient_id, study_uid, n, rows, cols)
    study = study_uid or _uid(seed, "study", *key)
    series = series_uid or _uid(seed, "series", study, *key)
    frame_of_ref = _uid(seed, "for", series)

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    _patient_study(
        ds,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study,
        series_uid=series,
        accession_number=accession_number,
        modality="CT",
    )
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PositionReferenceIndicator = ""
    _mono16(ds, rows, cols)
    base = _base_image(rows, cols, 0 if seed is None else seed)
    big_endian = ts == ExplicitVRBigEndian

    paths: list[Path] = []
    width = max(6, len(str(n)))
    for i in range(1, n + 1):
        sop_uid = _uid(seed, "instance", series, i)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = i
        _ct_geometry(ds, i, rows, cols)
        pixels = _slice_pixels(base, i)
        ds.PixelData = (pixels.byteswap() if big_endian else pixels).tobytes()
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, ts)
        path = out_dir / f"CT{i:0{width}d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def make_instance(
    path: Path,
    *,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_bytes: int | None = DEFAULT_PIXEL_BYTES,
    patient_id: str = "SYN0002",
    patient_name: str = "Synthetic^Single",
    accession_number: str = "ACC0002",
    modality: str = "CT",
    instance_number: int = 1,
    seed: int | None = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one small instance to ``path`` and return ``path``.

    ``sop_instance_uid``/``study_uid``/``series_uid`` are written as given with no validation,
    so hostile values (``"../../etc/passwd"``, 200 characters, ...) end up in the file (and in
    the file meta's MediaStorageSOPInstanceUID). ``pixel_bytes=None`` writes no pixel data;
    otherwise a 16-bit MONOCHROME2 frame of at least ``pixel_bytes`` bytes (exactly, when
    ``pixel_bytes/2`` is a perfect square or a multiple of 512). ``extra`` sets further
    attributes by keyword (also unvalidated), after everything else.

    Transfer syntaxes: implicit/explicit VR little endian, explicit big endian and deflated
    are written properly; RLE Lossless is really RLE-encoded; any other compressed syntax gets
    the raw frame as a single opaque fragment (structurally valid, not decodable).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = UID(transfer_syntax)
    key = (str(path.name), patient_id, instance_number)
    study = study_uid if study_uid is not None else _uid(seed, "study", *key)
    series = series_uid if series_uid is not None else _uid(seed, "series", study, *key)
    sop_uid = sop_instance_uid if sop_instance_uid is not None else _uid(seed, "sop", series, *key)

    with no_write_validation():
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        _patient_study(
            ds,
            patient_id=patient_id,
            patient_name=patient_name,
            study_uid=study,
            series_uid=series,
            accession_number=accession_number,
            modality=modality,
        )
        ds.InstanceNumber = instance_number
        ds.FrameOfReferenceUID = _uid(seed, "for", series)
        ds.PositionReferenceIndicator = ""
        if pixel_bytes is not None:
            rows, cols = _grid_for(pixel_bytes)
            _mono16(ds, rows, cols)
            _ct_geometry(ds, instance_number, rows, cols)
            pixels = _slice_pixels(
                _base_image(rows, cols, 0 if seed is None else seed), instance_number
            )
            if ts == RLELossless:
                ds.PixelData = pixels.tobytes()
                ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
            elif ts.is_compressed:
                ds.PixelData = encapsulate([pixels.tobytes()])
                ds["PixelData"].VR = "OB"
                ds["PixelData"].is_undefined_length = True
            elif ts == ExplicitVRBigEndian:
                ds.PixelData = pixels.byteswap().tobytes()
            else:
                ds.PixelData = pixels.tobytes()
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.file_meta = _file_meta(sop_class, sop_uid, ts)
        _write(path, ds, ts)
    return path


def _write(path: Path, ds: Dataset, ts: UID) -> None:
    if (
        ts
        in (
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
        )
        or ts.is_compressed
    ):
        dcmwrite(path, ds, enforce_file_format=True)
    else:  # unknown/private syntax: encode as explicit VR little endian
        dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)


BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def make_report(
    path: Path,
    *,
    study_uid: str,
    kind: str = "SR",
    patient_id: str = "SYN0001",
    content_date: str = "20240116",
    content_time: str = "093000",
    seed: int | None = 0,
) -> Path:
    """A report in a study: a Basic Text SR (`kind="SR"`) or an encapsulated PDF ("PDF")."""
    sop_class = BASIC_TEXT_SR if kind == "SR" else ENCAPSULATED_PDF
    uid = _uid(seed, "report", kind, study_uid)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, uid, ExplicitVRLittleEndian)
    _patient_study(
        ds,
        patient_id=patient_id,
        patient_name="Synthetic^Patient",
        study_uid=study_uid,
        series_uid=_uid(seed, "report-series", kind, study_uid),
        accession_number="ACC0001",
        modality="SR" if kind == "SR" else "DOC",
    )
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = uid
    ds.SeriesNumber = 90 if kind == "SR" else 91
    ds.InstanceNumber = 1
    ds.ContentDate = content_date
    ds.ContentTime = content_time
    if kind == "SR":
        concept = Dataset()
        concept.CodeValue = "18748-4"
        concept.CodingSchemeDesignator = "LN"
        concept.CodeMeaning = "Diagnostic imaging report"
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.TextValue = "No acute findings (synthetic)."
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.ConceptNameCodeSequence = [concept]
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        ds.ContentSequence = [text]
    else:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.DocumentTitle = "Synthetic report"
        ds.BurnedInAnnotation = "YES"
        ds.ConceptNameCodeSequence = []
        pdf = b"%PDF-1.4\n% synthetic\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
        ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, ds, ExplicitVRLittleEndian)
    return path


def make_large_object(path: Path, size_bytes: int, *, seed: int | None = 0) -> Path:
    """Write one valid multi-frame instance whose pixel data is about ``size_bytes``.

    Multi-frame Grayscale Word Secondary Capture, 512x512 16-bit frames, explicit VR little
    endian; NumberOfFrames = ceil(size_bytes / 512 KiB), so a 1 GiB request gives exactly
    2048 frames. The header is written by pydicom, then the PixelData element header and the
    pixel bytes are appended in 4 MiB chunks: memory use stays at a few MiB whatever the size.
    The file is written to ``path + '.part'`` and renamed when complete.
    """
    rows = cols = 512
    frame_bytes = rows * cols * 2
    frames = max(1, math.ceil(size_bytes / frame_bytes))
    total = frames * frame_bytes
    if total > 0xFFFFFFFE:
        raise ValueError("pixel data must stay below 4 GiB (32-bit element length)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    key = ("large", size_bytes)
    study = _uid(seed, "study", *key)
    series = _uid(seed, "series", *key)
    sop_uid = _uid(seed, "sop", *key)

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    _patient_study(
        ds,
        patient_id="SYNLARGE",
        patient_name="Synthetic^Large",
        study_uid=study,
        series_uid=series,
        accession_number="ACCLARGE",
        modality="OT",
    )
    ds.ConversionType = "SYN"
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    _mono16(ds, rows, cols)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 40.0
    ds.file_meta = _file_meta(sop_class, sop_uid, ExplicitVRLittleEndian)

    # A few frames' worth of deterministic 12-bit data, repeated.
    rng = np.random.default_rng(0 if seed is None else seed)
    chunk_frames = max(1, _CHUNK // frame_bytes)
    chunk = (
        rng.integers(0, 4096, size=chunk_frames * rows * cols, dtype=np.uint16)
        .astype("<u2")
        .tobytes()
    )

    part = path.with_name(path.name + ".part")
    with part.open("wb") as fh:
        dcmwrite(fh, ds, enforce_file_format=True)
        # (7FE0,0010) OW, 2 reserved bytes, 4-byte length: explicit VR little endian.
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, total))
        remaining = total
        while remaining:
            n = min(remaining, len(chunk))
            fh.write(chunk[:n])
            remaining -= n
        fh.flush()
        os.fsync(fh.fileno())
    part.replace(path)
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of the whole file, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def dataset_offset(path: Path) -> int:
    """Byte offset where the dataset starts, i.e. just after the file meta group (0002,xxxx).

    Walks the meta elements (always explicit VR little endian) rather than trusting
    (0002,0000). A file without the 128-byte preamble and ``DICM`` is taken to be a bare
    dataset (offset 0).
    """
    with Path(path).open("rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return 0
        offset = 132
        while True:
            fh.seek(offset)
            tag = fh.read(8)
            if len(tag) < 8:
                return offset
            group, _elem = struct.unpack("<HH", tag[:4])
            if group != 0x0002:
                return offset
            vr = tag[4:6]
            if vr in _LONG_VRS:
                ext = fh.read(4)
                if len(ext) < 4:
                    return offset
                (length,) = struct.unpack("<I", ext)
                offset += 12 + length
            else:
                (length,) = struct.unpack("<H", tag[6:8])
                offset += 8 + length


def dataset_bytes_hash(path: Path) -> str:
    """Hex SHA-256 of the file from the end of its file meta group to the end of the file.

    A receiver that writes its own file meta (other implementation UID, source AE, ...) but
    keeps the dataset bytes as received yields the same hash as the file that was sent, as
    long as the transfer syntax was not changed on the way.
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        fh.seek(dataset_offset(path))
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()
