"""Receiving something in parts and putting it back together: the one mechanism behind both
of the hub's multipart flows, study uploads (medix.hub.uploads) and files nodes prepare for
the hub's users (medix.hub.files).

A part arrives with its SHA-256 in X-Medix-Part-SHA256, identity or zstd encoded; it is read
without ever inflating beyond its part size, checked against its hash and its size, and kept
durably (`medix.durable.write_public`, its directory's entry fsynced too) before the store
records it. At commit the parts are read back in order as one stream (`Assembly`), hashed as
they are read and written into fsynced files; the result is built under a staging name and
renamed over its final name durably, so a crash leaves the old state or the new one.

What differs between the flows (who owns a resource, which sizes a part may have, manifests,
receipts, what a repeated request gets) stays with the flow; the HTTP statuses and messages
raised here are the same for both.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import shutil
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zstandard
from pydantic import BaseModel

from medix.clock import Clock
from medix.durable import fsync_dir, replace_durably, write_public, write_stream
from medix.hub.errors import HubError
from medix.hub.store import PartRow

COPY_CHUNK = 1 << 20
# zstd's worst case for incompressible input is a few bytes per 128 KiB block; 1/128 plus a
# constant is a generous bound on a compressed part.
COMPRESSED_SLACK_DIVISOR = 128
COMPRESSED_SLACK_BYTES = 4096
# The decompressor may not allocate windows beyond what a part needs; a frame asking for
# more is refused rather than trusted (decompression bombs).
ZSTD_MAX_WINDOW = 1 << 24
ENCODINGS = ("identity", "zstd")
LOCK_STRIPES = 64
MISSING_SHOWN = 100


def canonical(model: BaseModel) -> str:
    """A message as sorted, compact JSON: what a registration sent again is compared by."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def compressed_limit(part_size: int) -> int:
    """The most bytes a part's body may have on the wire, compressed or not."""
    return part_size + part_size // COMPRESSED_SLACK_DIVISOR + COMPRESSED_SLACK_BYTES


def _unsupported_encoding(encoding: str) -> HubError:
    return HubError(
        415,
        "Unsupported Content-Encoding",
        f"Content-Encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}",
    )


def decode_part(body: bytes, encoding: str, limit: int) -> bytes:
    """The uncompressed part, never more than `limit` bytes (413 beyond, without inflating)."""
    if encoding == "identity":
        data = body
    elif encoding == "zstd":
        decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        chunks: list[bytes] = []
        total = 0
        try:
            with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
                while total <= limit:
                    chunk = reader.read(min(COPY_CHUNK, limit + 1 - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
        except zstandard.ZstdError as exc:
            raise HubError(400, "Bad zstd data", f"the part does not decompress: {exc}") from exc
        data = b"".join(chunks)
    else:
        raise _unsupported_encoding(encoding)
    if len(data) > limit:
        raise HubError(
            413,
            "Part too large",
            f"the part decompresses to more than part_size ({limit} bytes)",
        )
    return data


def receive_part(
    n: int,
    read_body: Callable[[int], bytes],
    encoding: str,
    sha256_header: str,
    part_size: int,
    too_large_status: int = 413,
) -> tuple[bytes, str]:
    """Part `n`, uncompressed and checked against its claimed hash: (bytes, sha256 hex).
    400 without a usable hash header, 415 for an unknown encoding (both before the body is
    read), `too_large_status` when it inflates beyond `part_size`, 422 when the hash differs."""
    claimed = sha256_header.strip().lower()
    if len(claimed) != 64 or any(c not in "0123456789abcdef" for c in claimed):
        raise HubError(400, "Missing part hash", "X-Medix-Part-SHA256 must be 64 hex digits")
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ENCODINGS:
        # Refused before the body is read: there is nothing useful to do with it.
        raise _unsupported_encoding(encoding)
    body = read_body(compressed_limit(part_size))
    try:
        data = decode_part(body, encoding, part_size)
    except HubError as exc:
        if exc.status != 413 or too_large_status == 413:
            raise
        raise HubError(too_large_status, exc.title, exc.detail) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != claimed:
        raise HubError(422, "Part hash mismatch", f"part {n} hashes to {digest}, not {claimed}")
    return data, digest


def missing_detail(held: Iterable[int], parts: int) -> str:
    """`missing parts: 2, 3` (the first MISSING_SHOWN, then how many more)."""
    have = set(held)
    missing_count = parts - sum(1 for n in have if n < parts)
    missing = itertools.islice((n for n in range(parts) if n not in have), MISSING_SHOWN)
    shown = ", ".join(str(n) for n in missing)
    more = f" and {missing_count - MISSING_SHOWN} more" if missing_count > MISSING_SHOWN else ""
    return f"missing parts: {shown}{more}"


def check_layout(what: str, field: str, size: int, part_size: int, parts: int, most: int) -> None:
    """413 when `size` is above `most` bytes; 422 when `parts` is not what `size` makes in
    parts of `part_size`."""
    named = f"{field} {size}"
    if size > most:
        raise HubError(413, f"{what} too large", f"{named} exceeds {most}")
    expected = math.ceil(size / part_size)
    if parts != expected:
        raise HubError(
            422,
            "Inconsistent part count",
            f"{named} in parts of {part_size} makes {expected} parts, not {parts}",
        )


@dataclass(frozen=True)
class PartShelf:
    """Where one flow keeps its parts: a directory per resource, a file per part and the
    store's row per part."""

    directory: Callable[[str], Path]
    path: Callable[[str, int], Path]
    rows: Callable[[str], list[PartRow]]
    record: Callable[[str, int, str, int, float], None]  # (id, n, sha256, size, at)


@dataclass(frozen=True)
class Part:
    """A part as received: uncompressed, its hash checked."""

    n: int
    data: bytes
    sha256: str

    def held_as(self, held: dict[int, PartRow]) -> bool:
        """True when the hub already holds exactly this part."""
        row = held.get(self.n)
        return row is not None and row.sha256 == self.sha256


class Assembly:
    """Parts 0..count-1 read back in order as one stream, hashed as it is read; a context
    manager (the part being read is closed on leaving)."""

    def __init__(self, paths: list[Path]) -> None:
        self._source = self._read(paths)
        self._chunk = b""  # the chunk being handed out, from offset _at
        self._at = 0
        self._hash = hashlib.sha256()

    @staticmethod
    def _read(paths: list[Path]) -> Generator[bytes, None, None]:
        for path in paths:
            with open(path, "rb") as handle:
                while chunk := handle.read(COPY_CHUNK):
                    yield chunk

    def take(self, size: int) -> Iterator[bytes]:
        """The stream's next `size` bytes (fewer only where the stream ends)."""
        left = size
        while left:
            if self._at == len(self._chunk):
                chunk = next(self._source, b"")
                if not chunk:
                    return
                self._hash.update(chunk)
                self._chunk, self._at = chunk, 0
            end = min(len(self._chunk), self._at + left)
            whole = self._at == 0 and end == len(self._chunk)
            piece = self._chunk if whole else self._chunk[self._at : end]
            left -= end - self._at
            self._at = end
            yield piece

    def write(self, path: Path, size: int) -> str:
        """The stream's next `size` bytes into a new file at `path`, fsynced; its SHA-256."""
        _, digest = write_stream(
            path,
            self.take(size),
            limit=size,
            too_large=lambda: RuntimeError("an assembly never yields more than it is asked"),
        )
        return digest

    def finish(self) -> str:
        """The SHA-256 of the whole stream (what is left of it is read)."""
        for chunk in self._source:
            self._hash.update(chunk)
        self._chunk, self._at = b"", 0
        return self._hash.hexdigest()

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Assembly:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Multipart:
    """One flow's parts: receiving, keeping, checking for completeness and assembling them.

    `lock(id)` serialises the writes and the commit of one resource (striped locks: bounded
    memory); the flow holds it around its own checks of the resource's state."""

    def __init__(self, shelf: PartShelf, clock: Clock) -> None:
        self.shelf = shelf
        self.clock = clock
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))

    @contextmanager
    def lock(self, resource_id: str) -> Iterator[None]:
        stripe = int(hashlib.sha256(resource_id.encode()).hexdigest()[:8], 16)
        with self._locks[stripe % LOCK_STRIPES]:
            yield

    def held(self, resource_id: str) -> dict[int, PartRow]:
        return {row.n: row for row in self.shelf.rows(resource_id)}

    @staticmethod
    def receive(
        n: int,
        count: int,
        read_body: Callable[[int], bytes],
        encoding: str,
        sha256_header: str,
        *,
        part_size: int,
        size: int | None = None,
        too_large_status: int = 413,
    ) -> Part:
        """Part `n` of `count` (422 outside 0..count-1), read and checked (`receive_part`),
        then its size: exactly `size` bytes when the flow knows it (422), else at least one
        (422)."""
        if not 0 <= n < count:
            raise HubError(422, "No such part", f"parts are numbered 0..{count - 1}")
        data, digest = receive_part(
            n, read_body, encoding, sha256_header, part_size, too_large_status
        )
        if size is not None and len(data) != size:
            raise HubError(
                422, "Wrong part size", f"part {n} must be {size} bytes, not {len(data)}"
            )
        if not data:
            raise HubError(422, "Empty part", f"part {n} has no bytes")
        return Part(n, data, digest)

    def keep(self, resource_id: str, part: Part, held: dict[int, PartRow]) -> int:
        """Keep `part` durably unless `held` (the resource's parts, read under its lock)
        already has it, then record it; how many parts are held now."""
        if part.held_as(held):
            return len(held)
        directory = self.shelf.directory(resource_id)
        if not directory.is_dir():
            directory.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(directory.parent)
        write_public(self.shelf.path(resource_id, part.n), part.data)
        self.shelf.record(resource_id, part.n, part.sha256, len(part.data), self.clock.time())
        return len(held) + (part.n not in held)

    @staticmethod
    def require(held: dict[int, PartRow], count: int) -> None:
        """409 naming the missing parts unless parts 0..count-1 are all held."""
        if any(n not in held for n in range(count)):
            raise HubError(409, "Parts missing", missing_detail(held, count))

    def assemble(
        self,
        resource_id: str,
        count: int,
        final: Path,
        build: Callable[[Assembly, Path], None],
    ) -> None:
        """Make `final` (a file or a directory) from parts 0..count-1: `build(stream, staging)`
        writes `.<name>.tmp` beside it from the parts' stream and checks what it wrote
        (raising HubError); then the staging name replaces `final` durably. On any error the
        staging is removed, `final` is untouched and the parts stay."""
        staging = final.with_name(f".{final.name}.tmp")
        _remove(staging)  # left by a crash mid-assembly
        paths = [self.shelf.path(resource_id, n) for n in range(count)]
        try:
            with Assembly(paths) as stream:
                build(stream, staging)
            replace_durably(staging, final)
        except BaseException:
            _remove(staging)
            raise

    def discard(self, resource_id: str) -> None:
        """Drop every part of a resource (once what they made is kept)."""
        shutil.rmtree(self.shelf.directory(resource_id), ignore_errors=True)
