"""Files nodes prepare for the hub's users (a study zip per download job): registered per
job, sent in parts while the node still builds them, saved once whole, downloaded by a
capability URL (`/files/<file_id>/<name>`, the file id 192 random bits).

The file's size is known only at its commit, so a part as it arrives may be anything from
one byte to part_size; at the commit every part but the last must be part_size and the parts
must add up to the size and hash to the SHA-256 the commit names. Parts past the last (from
an earlier, longer attempt) are dropped with the rest once the file is saved. Parts travel
by medix.hub.multipart, like a study upload's.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from pathlib import Path

from medix.clock import Clock
from medix.durable import fsync_dir
from medix.hub.errors import HubError
from medix.hub.multipart import Assembly, Multipart, PartShelf, canonical, check_layout
from medix.hub.store import SAVED, FileRow, HubStore, NodeRow, PartRow
from medix.models import FileCommit, FileRegistration, FileSaved, FileUpload, PartAck

log = logging.getLogger(__name__)

# A file id is the capability in the hub user's download URL: 192 random bits.
FILE_ID_BYTES = 24


class FileUploads:
    """Files being sent by nodes and the saved ones the hub serves."""

    def __init__(
        self, store: HubStore, clock: Clock, *, max_stream_bytes: int, public_url: str = ""
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_stream_bytes = max_stream_bytes
        self.public_url = public_url  # where people reach the hub; links are relative when ""
        self.parts = Multipart(
            PartShelf(
                store.file_part_dir, store.file_part_path, store.file_parts, store.put_file_part
            ),
            clock,
        )

    def _own_file(self, node: NodeRow, file_id: str) -> FileRow:
        row = self.store.file(file_id)
        # Like uploads: another node's file is absent, not forbidden.
        if row is None or row.node_id != node.id:
            raise HubError(404, "No such file", file_id)
        return row

    def file_url(self, file_id: str, name: str) -> str:
        """Where the hub's user downloads a saved file (absolute when public_url is known)."""
        return f"{self.public_url}/files/{file_id}/{name}"

    def file_saved(self, row: FileRow) -> FileSaved | None:
        """What a saved file is (its link, size and hash); None while it is open."""
        if row.state != SAVED or row.size is None or row.sha256 is None or row.saved_at is None:
            return None
        return FileSaved(
            file_id=row.file_id,
            url=self.file_url(row.file_id, row.name),
            size=row.size,
            sha256=row.sha256,
            saved_at=row.saved_at,
        )

    def _file_upload(self, row: FileRow) -> FileUpload:
        return FileUpload(
            file_id=row.file_id,
            state="saved" if row.state == SAVED else "open",
            received_parts=tuple(p.n for p in self.store.file_parts(row.file_id)),
            saved=self.file_saved(row),
        )

    def register_file(self, node: NodeRow, reg: FileRegistration) -> tuple[FileUpload, bool]:
        """The file for a node's job: (upload, True) when newly made; 409 when the job already
        has a file with a different name, type or part size."""
        body = canonical(reg)
        row, created = self.store.add_file(
            secrets.token_urlsafe(FILE_ID_BYTES),
            node.id,
            reg.job_id,
            reg.name,
            body,
            reg.part_size,
            self.clock.time(),
        )
        if row.registration_json != body:
            raise HubError(
                409,
                "File registration conflict",
                f"job {reg.job_id} already has file {row.file_id} registered with a "
                "different name, media type or part size",
            )
        return self._file_upload(row), created

    def file_state(self, node: NodeRow, file_id: str) -> FileUpload:
        return self._file_upload(self._own_file(node, file_id))

    def put_file_part(
        self,
        node: NodeRow,
        file_id: str,
        n: int,
        read_body: Callable[[int], bytes],
        encoding: str,
        sha256_header: str,
    ) -> PartAck:
        """Hold part `n` of a file. Its size is checked at commit (the last part is the only
        short one, and which part is last is known only then); here it must not exceed
        part_size (422) and must hash as claimed (422)."""
        row = self._own_file(node, file_id)
        if row.state == SAVED:
            raise HubError(409, "File saved", f"{file_id} is already saved")
        part = self.parts.receive(
            n,
            math.ceil(self.max_stream_bytes / row.part_size),
            read_body,
            encoding,
            sha256_header,
            part_size=row.part_size,
            too_large_status=422,
        )
        with self.parts.lock(file_id):
            row = self._own_file(node, file_id)
            if row.state == SAVED:
                raise HubError(409, "File saved", f"{file_id} is already saved")
            held = self.parts.held(file_id)
            return PartAck(part=n, received_parts=self.parts.keep(file_id, part, held))

    def commit_file(self, node: NodeRow, file_id: str, request: FileCommit) -> FileSaved:
        """Assemble a file from its parts, check it and keep it; the same commit again gets
        the same answer."""
        with self.parts.lock(file_id):
            row = self._own_file(node, file_id)
            saved = self.file_saved(row)
            if saved is not None:
                if (row.size, row.sha256, row.parts) != (
                    request.size,
                    request.sha256,
                    request.parts,
                ):
                    raise HubError(
                        409,
                        "File saved",
                        f"{file_id} was saved with {row.parts} parts, {row.size} bytes, "
                        f"SHA-256 {row.sha256}",
                    )
                return saved
            check_layout(
                "File", "size", request.size, row.part_size, request.parts, self.max_stream_bytes
            )
            held = self.parts.held(file_id)
            self.parts.require(held, request.parts)
            _check_part_sizes(held, row.part_size, request)
            path = self._assemble(row, request)
            now = self.clock.time()
            if not self.store.save_file(file_id, request.size, request.sha256, request.parts, now):
                raise HubError(409, "File saved", f"{file_id} changed state")
            # Parts past the last (from an earlier, longer attempt) go with the rest.
            self.parts.discard(file_id)
            log.info(
                "saved file %s (%s, job %s of %s): %d bytes at %s",
                file_id,
                row.name,
                row.job_id,
                node.id,
                request.size,
                path,
            )
            stored = self.store.file(file_id)
            answer = None if stored is None else self.file_saved(stored)
            if answer is None:
                raise HubError(500, "File lost", f"{file_id} vanished while being saved")
            return answer

    def _assemble(self, row: FileRow, request: FileCommit) -> Path:
        """Concatenate parts 0..parts-1 into `files/<file_id>/<name>`; 422 when the whole
        hashes differently from the commit (the parts stay, for the node to re-send)."""
        directory = self.store.file_dir(row.file_id)
        directory.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(self.store.files_dir)
        final = directory / row.name

        def build(stream: Assembly, staging: Path) -> None:
            stream.write(staging, request.size)
            digest = stream.finish()
            if digest != request.sha256:
                raise HubError(
                    422,
                    "File hash mismatch",
                    f"the parts assemble to SHA-256 {digest}, the commit says {request.sha256}",
                )

        self.parts.assemble(row.file_id, request.parts, final, build)
        return final

    def saved_file(self, file_id: str, name: str) -> tuple[Path, str]:
        """A saved file's path and media type, by its capability URL's parts (404 otherwise)."""
        row = self.store.file(file_id)
        if row is None or row.state != SAVED or row.name != name:
            raise HubError(404, "No such file", "the link is not valid")
        path = self.store.file_dir(file_id) / row.name
        if not path.is_file():
            raise HubError(410, "File gone", "the hub no longer holds this file")
        media_type = FileRegistration.model_validate_json(row.registration_json).media_type
        return path, media_type


def _check_part_sizes(held: dict[int, PartRow], part_size: int, request: FileCommit) -> None:
    """422 unless every part but the last is part_size and the parts add up to the size."""
    for n in range(request.parts - 1):
        if held[n].size != part_size:
            raise HubError(
                422,
                "Wrong part size",
                f"part {n} is {held[n].size} bytes; every part but the last must be "
                f"part_size ({part_size})",
            )
    total = sum(held[n].size for n in range(request.parts))
    if total != request.size:
        raise HubError(
            422,
            "Size mismatch",
            f"the parts add up to {total} bytes, the commit says {request.size}",
        )
