"""A download as a zip a viewer opens: DICOM files in a folder tree with a DICOMDIR.

The zip is written as a stream (ZIP data descriptors, nothing is ever rewritten in place), so
its bytes can go to the hub while it is still growing: `FileUploader` sends each part as soon
as the zip holds it, three at a time (the node's part uploader, `afra.uplink.parts`), and
commits when the zip is closed. Instances are added as they arrive (from the spool, or from a
C-MOVE still running); each gets its File ID at once from `afra.node.dicomdir.DicomDir`
(pydicom's naming: PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx), and the DICOMDIR written last, after
the instances, names the same IDs. Instance files are copied byte for byte; only their zip
entries are compressed (deflate, level from `downloads.zip_level`; stored when the transfer
syntax already compresses the pixel data).

Calls to the hub and parts are tried again through a short outage with the node's backoff
(`afra.retry`); parts still missing after that get a few more rounds (10, 20 and 40 s apart)
before the download is given up.
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

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from afra.clock import Clock
from afra.errors import AfraError
from afra.node.dicomdir import DicomDir
from afra.retry import Backoff
from afra.uplink.client import HubClient, HubError, HubUnavailable
from afra.uplink.parts import PARTS_IN_FLIGHT, PartRetry, PartUploader
from medix.models import FileCommit, FileRegistration, FileSaved, FileUpload

LOG = logging.getLogger("afra.export")

# A registration or a commit: tried up to HUB_ATTEMPTS times through a hub outage.
HUB_ATTEMPTS = 5
HUB_BACKOFF = Backoff(base=2.0, cap=30.0)
# A part: up to PART_ATTEMPTS times, then RESEND_ROUNDS more rounds for the parts still
# missing once all were tried.
PART_ATTEMPTS = 5
PART_BACKOFF = Backoff(base=2.0, cap=20.0)
RESEND_ROUNDS = 3
RESEND_BACKOFF = Backoff(base=10.0, cap=40.0)
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
        self._parts: PartUploader | None = None  # once the hub registered the file
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
                HUB_BACKOFF.sleep(attempt, self.clock, self.stop)
        raise AssertionError("unreachable")

    def open(self, *, retry: bool = True) -> None:
        def register() -> FileUpload:
            return self.client.register_file(
                FileRegistration(job_id=self.job_id, name=self.name, part_size=self.part_size)
            )

        upload = self._hub(register) if retry else register()
        file_id = upload.file_id

        def put(number: int, body: bytes, sha256: str, encoding: str) -> None:
            self.client.put_file_part(file_id, number, body, sha256=sha256, encoding=encoding)

        self._parts = PartUploader(
            put,
            self._read,
            pool=self._pool,
            compression_level=self.level,
            stop=self.stop,
            stopped=lambda: UploadError("the box is stopping"),
            failed=lambda number, exc: UploadError(f"part {number}: {exc}"),
            held=upload.received_parts,
            retry=PartRetry(PART_ATTEMPTS, PART_BACKOFF, self.clock),
        )
        self.file_id = file_id

    def _read(self, number: int) -> bytes:
        """Part `number` of the file as it is now (a whole part, or the end at the finish)."""
        with self.path.open("rb") as fp:
            fp.seek(number * self.part_size)
            return fp.read(self.part_size)

    def grown(self, available: int) -> None:
        """The file now holds `available` bytes: send every whole part not yet sent."""
        if not self.file_id:
            return
        while (self._submitted + 1) * self.part_size <= available:
            self._submit(self._submitted)

    def _submit(self, number: int) -> None:
        assert self._parts is not None
        self._submitted = number + 1
        future = self._parts.submit(number)
        if future is not None:
            self._futures.append((number, future))

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
        # Parts lost to a hub outage longer than a part's own retries: a few more rounds
        # before the whole download is given up.
        assert self._parts is not None
        for round_ in range(RESEND_ROUNDS):
            if not failed:
                break
            LOG.warning(
                "%d part(s) of %s did not reach the hub; sending again", len(failed), self.name
            )
            RESEND_BACKOFF.sleep(round_ + 1, self.clock, self.stop)
            still = []
            for number in failed:
                try:
                    self._parts.send(number)
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
