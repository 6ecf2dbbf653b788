"""A study revision as the upload stream of docs/medix.md: its files, concatenated, in parts.

Nothing here holds more than one part in memory: hashes are computed file by file in 1 MiB
reads, and a part is read from the one or more files it spans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from afra.dicom.spool import Spool
from afra.store.index import UploadInstance

READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Placed:
    instance: UploadInstance
    offset: int


@dataclass(frozen=True)
class StreamPlan:
    placed: tuple[Placed, ...]
    size: int
    part_size: int

    @property
    def parts(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_range(self, number: int) -> tuple[int, int]:
        start = number * self.part_size
        return start, min(start + self.part_size, self.size)


def plan(instances: Sequence[UploadInstance], part_size: int) -> StreamPlan:
    placed, offset = [], 0
    for instance in instances:
        placed.append(Placed(instance, offset))
        offset += instance.size
    return StreamPlan(tuple(placed), offset, part_size)


def hash_files(spool: Spool, instances: Sequence[UploadInstance]) -> tuple[dict[str, str], str]:
    """Each instance's SHA-256 and the whole stream's, in one pass over the files."""
    stream = hashlib.sha256()
    hashes: dict[str, str] = {}
    for instance in instances:
        one = hashlib.sha256()
        with spool.absolute(instance.path).open("rb") as fp:
            while chunk := fp.read(READ_SIZE):
                one.update(chunk)
                stream.update(chunk)
        hashes[instance.sop_instance_uid] = one.hexdigest()
    return hashes, stream.hexdigest()


def read_part(spool: Spool, stream: StreamPlan, number: int) -> bytes:
    """The bytes of part `number`, read from the files it spans."""
    start, end = stream.part_range(number)
    out = bytearray()
    for item in stream.placed:
        lo, hi = item.offset, item.offset + item.instance.size
        if hi <= start or lo >= end:
            continue
        with spool.absolute(item.instance.path).open("rb") as fp:
            fp.seek(max(start, lo) - lo)
            out += fp.read(min(end, hi) - max(start, lo))
    if len(out) != end - start:
        raise OSError(f"part {number} is short: a stored file changed size")
    return bytes(out)
