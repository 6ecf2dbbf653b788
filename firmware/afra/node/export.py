"""A download as a zip a viewer opens: DICOM files in a folder tree with a DICOMDIR.

The zip is written as a stream (ZIP data descriptors, nothing is ever rewritten in place), so
its bytes can go to the hub while it is still growing: `FileUploader` sends each part as soon
as the zip holds it, three at a time, and commits when the zip is closed. Instances are added
as they arrive (from the spool, or from a C-MOVE still running); each gets its File ID from
pydicom's FileSet at once (PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx), and the DICOMDIR that
FileSet writes at the end names the same IDs. Instance files are copied byte for byte; only
their zip entries are compressed (deflate, level from `downloads.zip_level`; stored when the
transfer syntax already compresses the pixel data).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

import zstandard
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from afra.clock import Clock
from afra.errors import AfraError
from afra.node.dicomdir import DicomDir
from afra.uplink.client import HubClient, HubError, HubUnavailable
from medix.models import FileCommit, FileRegistration, FileSaved, FileUpload

LOG = logging.getLogger("afra.export")

PARTS_IN_FLIGHT = 3
MIN_SAVING = 0.03
PART_ATTEMPTS = 5
HUB_ATTEMPTS = 5
RESEND_ROUNDS = 3
T = TypeVar("T")


class ExportError(AfraError):
    """The zip could not be made."""


class UploadError(AfraError):
    """The zip could not be handed to the hub."""


class _Growing:
    """An append-only, non-seekable writer: zipfile then writes data descriptors, and every
    byte once written stays as it is. Counts and hashes what passes."""

    def __init__(self, path: Path) -> None:
        self._fp: BinaryIO = path.open("wb")
        self.size = 0
        self.flushed = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        written = self._fp.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return written

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._fp.flush()
        self.flushed = self.size

    def close(self) -> None:
        self.flush()
        os.fsync(self._fp.fileno())
        self._fp.close()


def _is_compressed(transfer_syntax: str) -> bool:
    try:
        deflated = transfer_syntax == "1.2.840.10008.1.2.1.99"
        return deflated or bool(UID(transfer_syntax).is_compressed)
    except ValueError:
        return False


class StudyZip:
    """Adds instance files to a streaming zip and writes the DICOMDIR last (one thread: the
    job's; the uploader it feeds works from the file, not from this object)."""

    def __init__(self, path: Path, *, level: int = 1) -> None:
        self.path = path
        self.level = level
        self.out = _Growing(path)
        self.zip = zipfile.ZipFile(self.out, "w", allowZip64=True)
        self.dicomdir = DicomDir()
        self.ids: dict[str, str] = {}  # SOP Instance UID -> File ID
        self.outside: list[str] = []  # instances that no directory record could describe
        self.listeners: list[Callable[[int], None]] = []

    @property
    def count(self) -> int:
        return len(self.ids) + len(self.outside)

    def add(self, source: Path) -> str:
        """Add one instance file; returns its path in the zip."""
        try:
            header = dcmread(source, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise ExportError(f"{source.name} cannot be read as DICOM: {exc}") from exc
        uid = str(header.get("SOPInstanceUID", ""))
        if uid in self.ids:
            return self.ids[uid]
        name = self._file_id(header)
        if name is None:
            name = f"OTHER/{len(self.outside):08d}.dcm"
            self.outside.append(uid)
            LOG.warning("instance %s has no directory record; zipped as %s", uid, name)
        else:
            self.ids[uid] = name
        syntax = str(getattr(header.file_meta, "TransferSyntaxUID", ""))
        method = zipfile.ZIP_STORED
        if self.level > 0 and not _is_compressed(syntax):
            method = zipfile.ZIP_DEFLATED
        try:
            self.zip.write(source, name, compress_type=method, compresslevel=self.level)
        except OSError as exc:
            raise ExportError(f"could not write the zip: {exc}") from exc
        self.out.flush()
        grown = self.out.flushed
        for listener in self.listeners:
            listener(grown)
        return name

    def _file_id(self, header: Dataset) -> str | None:
        try:
            return self.dicomdir.add(header)
        except (ValueError, KeyError, AttributeError, TypeError):
            return None

    def close(self) -> tuple[int, str]:
        """Write the DICOMDIR and the central directory; returns (size, sha256)."""
        if self.ids:
            info = zipfile.ZipInfo("DICOMDIR", date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            self.zip.writestr(info, self.dicomdir.encode())
        self.zip.close()
        self.out.close()
        size, digest = self.out.size, self.out.sha256.hexdigest()
        for listener in self.listeners:
            listener(size)
        return size, digest

    def abandon(self) -> None:
        # The zip's close writes its central directory and may fail (a full disk): the file
        # is closed all the same, then removed.
        with contextlib.suppress(OSError, ValueError):
            self.zip.close()
        with contextlib.suppress(OSError, ValueError):
            self.out.close()
        self.path.unlink(missing_ok=True)


class FileUploader:
    """Sends a growing file to the hub in parts (docs/medix.md: files), then commits it."""

    def __init__(
        self,
        client: HubClient,
        *,
        job_id: str,
        name: str,
        path: Path,
        part_size: int,
        clock: Clock,
        stop: threading.Event,
        compression_level: int = 3,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.name = name
        self.path = path
        self.part_size = part_size
        self.clock = clock
        self.stop = stop
        self.level = compression_level
        self.file_id = ""
        self._held: set[int] = set()
        self._submitted = 0  # parts 0.._submitted-1 are sent or on their way
        self._futures: list[tuple[int, Future[None]]] = []
        self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="file-part")

    def _hub(self, call: Callable[[], T]) -> T:
        """A call to the hub, tried again through a short outage (HubUnavailable)."""
        for attempt in range(1, HUB_ATTEMPTS + 1):
            try:
                return call()
            except HubUnavailable:
                if attempt == HUB_ATTEMPTS or self.stop.is_set():
                    raise
                self.clock.sleep(min(2.0**attempt, 30.0), self.stop)
        raise AssertionError("unreachable")

    def open(self, *, retry: bool = True) -> None:
        def register() -> FileUpload:
            return self.client.register_file(
                FileRegistration(job_id=self.job_id, name=self.name, part_size=self.part_size)
            )

        upload = self._hub(register) if retry else register()
        self.file_id = upload.file_id
        self._held = set(upload.received_parts)

    def grown(self, available: int) -> None:
        """The file now holds `available` bytes: send every whole part not yet sent."""
        if not self.file_id:
            return
        while (self._submitted + 1) * self.part_size <= available:
            self._submit(self._submitted)

    def _submit(self, number: int) -> None:
        self._submitted = number + 1
        if number not in self._held:
            self._futures.append((number, self._pool.submit(self._send, number)))

    def _send(self, number: int) -> None:
        with self.path.open("rb") as fp:
            fp.seek(number * self.part_size)
            raw = fp.read(self.part_size)
        digest = hashlib.sha256(raw).hexdigest()
        packed = zstandard.ZstdCompressor(level=self.level).compress(raw)
        body, encoding = (
            (packed, "zstd") if len(packed) <= len(raw) * (1 - MIN_SAVING) else (raw, "identity")
        )
        for attempt in range(1, PART_ATTEMPTS + 1):
            if self.stop.is_set():
                raise UploadError("the box is stopping")
            try:
                self.client.put_file_part(
                    self.file_id, number, body, sha256=digest, encoding=encoding
                )
            except HubUnavailable as exc:
                if attempt == PART_ATTEMPTS:
                    raise UploadError(f"part {number}: {exc}") from exc
                self.clock.sleep(min(2.0**attempt, 20.0), self.stop)
                continue
            except HubError as exc:
                raise UploadError(f"part {number}: {exc}") from exc
            return

    def finish(self, size: int, sha256: str) -> FileSaved:
        parts = max(1, -(-size // self.part_size))
        while self._submitted < parts:
            self._submit(self._submitted)
        failed: list[int] = []
        try:
            for number, future in self._futures:
                try:
                    future.result()
                except UploadError:
                    failed.append(number)
        finally:
            self._pool.shutdown(wait=True)
        # Parts lost to a hub outage longer than a part's own retries: a few more rounds,
        # minutes apart, before the whole download is given up.
        for round_ in range(RESEND_ROUNDS):
            if not failed:
                break
            LOG.warning(
                "%d part(s) of %s did not reach the hub; sending again", len(failed), self.name
            )
            self.clock.sleep(10.0 * 2**round_, self.stop)
            still = []
            for number in failed:
                try:
                    self._send(number)
                except UploadError:
                    still.append(number)
            failed = still
        if failed:
            raise UploadError(f"parts {failed[:5]} did not reach the hub")
        try:
            return self._hub(
                lambda: self.client.commit_file(
                    self.file_id, FileCommit(size=size, sha256=sha256, parts=parts)
                )
            )
        except HubError as exc:
            raise UploadError(f"the hub did not take the file: {exc}") from exc

    def abandon(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
