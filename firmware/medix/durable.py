"""Durable file writes: the one place that makes a file survive a power cut.

Node and hub alike write through these: a whole file goes to a temporary name of its own
(created exclusively, with its final mode from the first byte), is fsynced, renamed over the
old one, and the directory is fsynced, so a reader (or a box after a power cut) sees the old
file or the new one, never a mix, and two threads writing at once never mix either.

Received DICOM objects take the same order in `afra.dicom.spool.Spool.commit` (there the
rename is a link, which refuses to replace), built on `fsync_file` and `fsync_dir` from here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def fsync_dir(path: Path) -> None:
    """Make a rename (or a new entry) inside `path` durable: the directory itself is synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a file already written and closed (by this process or another)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A fresh hidden name beside `path`: `.name.<random>.tmp`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(
    path: Path, data: bytes, *, mode: int = PUBLIC, sync: bool = True, single_writer: bool = False
) -> None:
    """Replace `path` with `data` whole. With `sync` (the default) also durably: fsync the
    file before the rename and the directory after it. `sync=False` is for files that are
    rewritten every few seconds and worthless after a reboot (the status file), where a
    flush per write would only wear the card. `single_writer`: one thread only ever writes
    `path`, so the temporary name can be fixed (`.name.tmp`) and a cut between write and
    rename leaves one stale file that the next write replaces, not one per cut."""
    tmp = path.with_name(f".{path.name}.tmp") if single_writer else temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if single_writer else os.O_EXCL)
    fd = os.open(tmp, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically and durably, mode 0600 from the first byte."""
    write_atomic(path, data, mode=PRIVATE)


def write_public(path: Path, data: bytes) -> None:
    """Write a file atomically and durably (mode 0644)."""
    write_atomic(path, data, mode=PUBLIC)


def replace_durably(src: Path, dst: Path) -> None:
    """Move a file already written (and fsynced by its writer) over `dst`, and make the
    rename durable."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def write_stream(
    path: Path, chunks: Iterable[bytes], *, limit: int, too_large: Callable[[], Exception]
) -> tuple[int, str]:
    """Write `chunks` into a new file at `path` (created exclusively, mode 0600) and fsync it;
    its size and SHA-256. More than `limit` bytes raises `too_large()`; on any error the file
    is removed. The caller renames it into place (`replace_durably`) once it is checked."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE), "wb") as fp:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large()
                digest.update(chunk)
                fp.write(chunk)
            fp.flush()
            os.fsync(fp.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()
