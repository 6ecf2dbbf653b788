"""The spool: where instances live on disk, and the only code that makes them durable.

Layout under the storage root:
    tmp/           objects being received (same filesystem, so a rename is atomic)
    objects/       <2 hex>/<study hash>/<instance hash>.dcm, one file per acknowledged instance
    conflicts/     a second, different payload under a SOP Instance UID already held
    quarantine/    objects refused with a failure status, kept for a technician to look at

File names are hashes of the UIDs, never UID text, so no peer can choose a path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import itertools
import logging
import mmap
import os
import secrets
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from afra.datadir import CONFLICTS, OBJECTS, QUARANTINE, TMP
from afra.errors import StorageError
from medix.durable import fsync_dir, fsync_file

LOG = logging.getLogger("afra.spool")

# In a conflicts/ name: a copy sent to replace a lost file (Spool.kept_for_lost).
LOST_MARK = "-lost"
SUFFIX = ".dcm"


SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """sync_file_range(2) from libc (fd, offset, length, flags; -1 with errno on failure)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing pages back, without waiting: while an object is still arriving, its pages
    already travel to the disk, so the fsync that makes it durable only waits for the tail
    (measured in docs/ARCHITECTURE.md)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def write_out(fd: int) -> bool:
    """Write every dirty page of the file and wait for it, without flushing the device's
    cache (so its blocks are allocated and its size on disk is whole). False where the call
    is missing or refused for this descriptor; OSError for an I/O error."""
    if _sync_file_range is None:
        return False
    flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    if _sync_file_range(fd, 0, 0, flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.ESPIPE):
            return False  # not offered here (a filter, a kernel, a descriptor): POSIX's order
        raise OSError(err, os.strerror(err))
    return True


# Direct I/O (O_DIRECT): received data go from the acceptor's aligned buffer to the device
# without a copy into the page cache, which measured as the largest part of the box's CPU per
# instance (docs/ARCHITECTURE.md). Offsets, lengths and the buffer's address are multiples of
# DIRECT_ALIGN (4 KiB covers 512-byte and 4 KiB logical blocks).
DIRECT_ALIGN = 4096
O_DIRECT = getattr(os, "O_DIRECT", 0)


# On ext4 with a journal (the appliance's data partition), one fsync(2) of a file just linked
# under a new name makes the file and that name durable, where POSIX asks for a second flush,
# of the directory: link(2) changes the directory block and the linked inode in one journal
# transaction, and the file's fsync commits the transaction that last changed its inode.
# docs/ARCHITECTURE.md, "One flush per instance on a journaled ext4"; checked on a real
# device by tests/dicom/test_one_flush.py. Not without a journal: see there.
SYS = Path("/sys")


def fsync_covers_new_names(directory: Path, *, sys_root: Path = SYS) -> bool:
    """Whether `directory` is on an ext4 filesystem with a journal, as the kernel reports it:
    /sys/fs/ext4/<device>/journal_task names the journal's thread ("<none>" without a journal;
    the image's 6.1 ext4.ko has the attribute). Anything else (ext4 without a journal, tmpfs,
    overlay, btrfs, a kernel without the attribute): False, and the spool keeps POSIX's
    order."""
    dev = os.stat(directory).st_dev
    try:
        device = (sys_root / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").resolve().name
        task = (sys_root / "fs" / "ext4" / device / "journal_task").read_text().strip()
    except OSError:
        return False
    return task.isdigit()


def direct_io_works(directory: Path) -> bool:
    """Whether files in `directory` take O_DIRECT writes (tmpfs and some FUSE mounts refuse)."""
    if not O_DIRECT:
        return False
    probe = directory / f".direct-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, DIRECT_ALIGN) as block:
            return os.write(fd, block) == DIRECT_ALIGN
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


class AlreadyStored(FileExistsError):
    """The object's final path is already taken (by a copy stored a moment earlier)."""


def uid_hash(uid: str) -> str:
    return hashlib.blake2b(uid.encode("ascii", "replace"), digest_size=16).hexdigest()


def _data_set_offset(fp: BinaryIO) -> int | None:
    """Where a Part 10 file's data set starts: after the preamble, 'DICM' and the file meta."""
    fp.seek(0)
    head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return None
    (group_length,) = struct.unpack_from("<I", head, 140)
    return 144 + int(group_length)


class Spool:
    """Durable files under one storage root."""

    def __init__(
        self,
        root: Path,
        *,
        free_bytes: Callable[[], int] | None = None,
        direct_io: bool | None = None,
        one_flush: bool | None = None,
    ) -> None:
        self.root = root
        # Whether received objects are written with O_DIRECT; None: found out on first use.
        self._direct_io = direct_io
        # Whether one fsync of a linked file makes its name durable too (ext4 with a journal,
        # see fsync_covers_new_names); None: found out on first use. False: POSIX's order.
        self._one_flush = one_flush
        # The storage device's free space; a seam so tests can stand in a disk that fills.
        self._free_bytes = free_bytes or (lambda: shutil.disk_usage(self.root).free)
        self.tmp_dir = root / TMP
        self._known_dirs: set[Path] = set()
        self._tmp_names = itertools.count()
        self._tmp_prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        for name in (TMP, OBJECTS, CONFLICTS, QUARANTINE):
            self.ensure_dir(root / name)

    def ensure_dir(self, path: Path) -> None:
        """Create a directory and make its entry durable in each parent, up to the first
        directory this spool already knows to be durable.

        Also where the directory exists: another thread or process may have just made it
        and not yet flushed its parent, and what is linked into it is acknowledged.
        """
        if path in self._known_dirs:
            return
        levels: list[Path] = []
        p = path
        while p not in self._known_dirs and p != p.parent:
            # The root and what is above it: only where missing (the root is made once).
            if (p == self.root or not p.is_relative_to(self.root)) and p.exists():
                break
            levels.append(p)
            p = p.parent
        for d in reversed(levels):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o750)
            fsync_dir(d.parent)
            self._known_dirs.add(d)

    @property
    def direct_io(self) -> bool:
        """Whether received objects are written to tmp/ with O_DIRECT (probed once)."""
        if self._direct_io is None:
            try:
                self._direct_io = direct_io_works(self.tmp_dir)
            except OSError:
                self._direct_io = False
        return self._direct_io

    @direct_io.setter
    def direct_io(self, value: bool) -> None:
        self._direct_io = value

    @property
    def one_flush(self) -> bool:
        """Whether commit makes a file and its name durable with one fsync (probed once)."""
        if self._one_flush is None:
            try:
                # tmp/: where the links start (objects/ must be on its filesystem for link).
                self._one_flush = fsync_covers_new_names(self.tmp_dir)
            except OSError:
                self._one_flush = False
        return self._one_flush

    @one_flush.setter
    def one_flush(self, value: bool) -> None:
        self._one_flush = value

    def new_tmp_path(self) -> Path:
        """A fresh name in tmp/ for an object about to be received."""
        return self.tmp_dir / f"{self._tmp_prefix}-{next(self._tmp_names)}.part"

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> str:
        """The relative path of an instance: hashes only, grouped by study."""
        study = uid_hash(study_uid)
        return f"{OBJECTS}/{study[:2]}/{study}/{uid_hash(sop_instance_uid)}{SUFFIX}"

    def absolute(self, rel_path: str) -> Path:
        return self.root / rel_path

    def commit(
        self, src: Path, rel_path: str, *, synced: bool = False, fd: int | None = None
    ) -> None:
        """Move a received file in under `rel_path`, it and its name durable on return.

        On a journaled ext4 (`one_flush`) and given `fd`: write the file's pages out (no
        device flush), link, then one fsync of the file, whose journal commit holds the new
        name too. Elsewhere: fsync the file (unless the caller did,
        `synced`), link, fsync the directory. `fd`: the file, still open, to fsync.
        Never replaces a file already there (another process may have stored the same
        instance a moment ago): that raises AlreadyStored and leaves `src` in place.
        """
        dst = self.root / rel_path
        # With the descriptor only: its pages are written out before the name exists, so a
        # journal commit made by anyone's fsync from the link on carries the whole file with
        # the name, never the name over a file whose tail is still in the page cache.
        one_flush = self.one_flush and fd is not None
        try:
            if one_flush and fd is not None:
                one_flush = write_out(fd)
            if not synced and not one_flush:
                self.fsync_received(src, fd)
            self.ensure_dir(dst.parent)
            try:
                try:
                    os.link(src, dst)  # rename(2) would silently replace; link(2) refuses
                except FileNotFoundError:
                    if not src.exists():
                        raise
                    # Its folder was removed while the box ran (by hand, a cleanup): made
                    # again, once, instead of refusing every object of that study until a
                    # restart.
                    self._forget_dirs(dst.parent)
                    self.ensure_dir(dst.parent)
                    os.link(src, dst)
            except FileExistsError:
                raise AlreadyStored(rel_path) from None
            try:
                if one_flush:
                    self.fsync_received(src, fd)
                else:
                    fsync_dir(dst.parent)
            except OSError:
                # Not durable, so not answered as stored: the name goes too, or the next start
                # would index (and upload) an object its sender was told was refused.
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                raise
            os.unlink(src)
        except OSError as exc:
            if isinstance(exc, AlreadyStored):
                raise
            raise StorageError(f"cannot make {rel_path} durable: {exc}") from exc

    def make_durable(self, rel_path: str) -> None:
        """Flush a file already under its name, and its folder (POSIX's order: any filesystem)."""
        path = self.root / rel_path
        try:
            fsync_file(path)
            fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot make {rel_path} durable: {exc}") from exc

    def flush_folder(self, rel_path: str) -> None:
        """Make the folder of `rel_path` durable (a name moved out of it stays gone)."""
        try:
            fsync_dir((self.root / rel_path).parent)
        except OSError as exc:
            raise StorageError(f"cannot flush the folder of {rel_path}: {exc}") from exc

    @contextlib.contextmanager
    def folder_locked(self, rel_path: str) -> Iterator[None]:
        """Hold the flock of the folder `rel_path` goes into (made if missing), across
        processes: what must not interleave in one study's folder (a restore)."""
        folder = (self.root / rel_path).parent
        self.ensure_dir(folder)
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # removed behind the spool's back: made again
            self._forget_dirs(folder)
            self.ensure_dir(folder)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _forget_dirs(self, path: Path) -> None:
        """Folders from `path` up to the root are no longer known to exist (one was removed
        while the box ran): the next ensure_dir makes and flushes what is missing."""
        p = path
        while p != self.root and p.is_relative_to(self.root):
            self._known_dirs.discard(p)
            p = p.parent

    def withdraw(self, rel_path: str) -> None:
        """Take a stored name away again, as far as the device lets: the name removed (if
        still there: a move elsewhere may have taken it) and its folder flushed."""
        path = self.root / rel_path
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as exc:
            LOG.error("could not take %s away again: %s", rel_path, exc)

    @staticmethod
    def fsync_received(path: Path, fd: int | None) -> None:
        """fsync a received file: through `fd`, the descriptor it was written with, if open."""
        if fd is not None:
            os.fsync(fd)
        else:
            fsync_file(path)

    def keep_conflict(self, src: Path, sop_instance_uid: str, *, for_lost: bool = False) -> str:
        """Keep a copy that differs from the one held, under conflicts/. `for_lost`: sent to
        replace a file gone from the device, and refused only because the study was hashed
        for the hub (its name says so: `kept_for_lost`; uplink/lost.py may take it)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        mark = LOST_MARK if for_lost else ""
        rel = (
            f"{CONFLICTS}/{uid_hash(sop_instance_uid)}{mark}-{stamp}-{secrets.token_hex(4)}{SUFFIX}"
        )
        self.commit(src, rel)
        return rel

    @staticmethod
    def kept_for_lost(rel_path: str) -> bool:
        """A conflicts/ copy kept with `for_lost` (the name: <uid hash>-lost-<stamp>-...)."""
        return Path(rel_path).name.split("-")[1:2] == [LOST_MARK.strip("-")]

    def quarantine(self, src: Path) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        rel = f"{QUARANTINE}/{stamp}-{secrets.token_hex(6)}{SUFFIX}"
        self.commit(src, rel)
        return rel

    def same_content(self, src: Path, rel_path: str) -> bool:
        """True when a newly received file's data set is byte-for-byte the one stored.

        The file meta is left out: it records who sent the copy and how, not the instance.
        """
        dst = self.root / rel_path
        try:
            with src.open("rb") as a, dst.open("rb") as b:
                start_a, start_b = _data_set_offset(a), _data_set_offset(b)
                size_a, size_b = src.stat().st_size, dst.stat().st_size
                if start_a is None or start_b is None or size_a - start_a != size_b - start_b:
                    return False
                a.seek(start_a)
                b.seek(start_b)
                while True:
                    chunk_a = a.read(1 << 20)
                    if chunk_a != b.read(1 << 20):
                        return False
                    if not chunk_a:
                        return True
        except FileNotFoundError:
            return False

    def free_bytes(self) -> int:
        return self._free_bytes()

    def clean_tmp(self) -> int:
        """Remove what a crash left in tmp/; returns how many were partial receives (never
        acknowledged). A name whose file has another one was stored (the crash came between
        commit's link and its unlink): only this name goes."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.is_file():
                partial = entry.stat().st_nlink == 1
                entry.unlink(missing_ok=True)
                removed += partial
        return removed

    def iter_objects(self) -> Iterator[str]:
        """Relative paths of every stored instance file."""
        base = self.root / OBJECTS
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(SUFFIX):
                    yield f"{rel_dir}/{name}"
