"""Study uploads: a node registers a study revision, sends its instance stream in parts and
commits it with a manifest; the hub cuts the stream back into instance files, checks every
hash and answers with a signed receipt.

Registration is idempotent per (node, study, revision): the same body gets the same upload,
a different one 409. Every part but the last is exactly part_size bytes (checked as it
arrives). The manifest must list `instance_count` instances that tile the stream in order.
A committed upload answers a part or a commit sent again with what it already has; its
parts are dropped once the instance files hold every byte. Parts travel by medix.hub.multipart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from medix.clock import Clock
from medix.durable import write_public
from medix.hub.ca import HubCA
from medix.hub.errors import HubError
from medix.hub.multipart import Assembly, Multipart, PartShelf, canonical, check_layout
from medix.hub.physicians import physician_key
from medix.hub.store import COMMITTED, HubStore, InstanceRow, NodeRow, UploadRow
from medix.models import (
    CommitRequest,
    PartAck,
    Receipt,
    Registration,
    StudyRegistration,
)
from medix.receipts import receipt_fields

log = logging.getLogger(__name__)


def _expected_part_size(reg: StudyRegistration, n: int) -> int:
    last = reg.stream_size - reg.part_size * (reg.parts - 1)
    return reg.part_size if n < reg.parts - 1 else last


def _instance_name(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest() + ".dcm"


class StudyUploads:
    """Uploads of study revisions, their parts and the committed studies' instance files."""

    def __init__(self, store: HubStore, ca: HubCA, clock: Clock, *, max_stream_bytes: int) -> None:
        self.store = store
        self.ca = ca
        self.clock = clock
        self.max_stream_bytes = max_stream_bytes
        self.parts = Multipart(
            PartShelf(store.part_dir, store.part_path, store.parts, store.put_part), clock
        )

    def _own_upload(self, node: NodeRow, upload_id: str) -> UploadRow:
        upload = self.store.upload(upload_id)
        # Another node's upload is reported as absent, not forbidden: ids are not disclosed.
        if upload is None or upload.node_id != node.id:
            raise HubError(404, "No such upload", upload_id)
        return upload

    def _registration(self, upload: UploadRow) -> Registration:
        receipt = Receipt.model_validate_json(upload.receipt_json) if upload.receipt_json else None
        return Registration(
            upload_id=upload.upload_id,
            state="committed" if upload.state == COMMITTED else "open",
            received_parts=tuple(p.n for p in self.store.parts(upload.upload_id)),
            receipt=receipt,
        )

    def register(self, node: NodeRow, reg: StudyRegistration) -> tuple[Registration, bool]:
        """The upload for a study revision: (registration, True) when newly made."""
        check_layout(
            "Study", "stream_size", reg.stream_size, reg.part_size, reg.parts, self.max_stream_bytes
        )
        body = canonical(reg)
        upload, created = self.store.add_upload(
            uuid.uuid4().hex,
            node.id,
            reg.study_uid,
            reg.revision,
            body,
            reg.medis_code,
            physician_key(reg.referring_physician),
            self.clock.time(),
        )
        if upload.registration_json != body:
            raise HubError(
                409,
                "Registration conflict",
                f"study {reg.study_uid} revision {reg.revision} is already registered "
                f"as {upload.upload_id} with a different body",
            )
        return self._registration(upload), created

    def upload_state(self, node: NodeRow, upload_id: str) -> Registration:
        return self._registration(self._own_upload(node, upload_id))

    def put_part(
        self,
        node: NodeRow,
        upload_id: str,
        n: int,
        read_body: Callable[[int], bytes],
        encoding: str,
        sha256_header: str,
    ) -> PartAck:
        """Hold part `n` (exactly its size: part_size, the last one what is left); the same
        part again after the commit is acknowledged, another one is 409."""
        upload = self._own_upload(node, upload_id)
        reg = StudyRegistration.model_validate_json(upload.registration_json)
        part = self.parts.receive(
            n,
            reg.parts,
            read_body,
            encoding,
            sha256_header,
            part_size=reg.part_size,
            size=_expected_part_size(reg, n),
        )
        with self.parts.lock(upload_id):
            upload = self._own_upload(node, upload_id)
            held = self.parts.held(upload_id)
            if upload.state == COMMITTED:
                if part.held_as(held):
                    return PartAck(part=n, received_parts=len(held))
                raise HubError(409, "Upload committed", f"{upload_id} is already committed")
            return PartAck(part=n, received_parts=self.parts.keep(upload_id, part, held))

    def commit(self, node: NodeRow, upload_id: str, request: CommitRequest) -> Receipt:
        """Check the manifest, store the instance files and sign the receipt; the same commit
        again gets the same receipt, one with another stream hash 409."""
        with self.parts.lock(upload_id):
            upload = self._own_upload(node, upload_id)
            if upload.state == COMMITTED and upload.receipt_json:
                receipt = Receipt.model_validate_json(upload.receipt_json)
                if receipt.stream_sha256 != request.stream_sha256:
                    raise HubError(
                        409,
                        "Upload committed",
                        f"{upload_id} was committed with stream {receipt.stream_sha256}",
                    )
                return receipt
            reg = StudyRegistration.model_validate_json(upload.registration_json)
            self.parts.require(self.parts.held(upload_id), reg.parts)
            _check_manifest(reg, request)
            instances = self._split(upload_id, reg, request)
            now = self.clock.time()
            unsigned = Receipt(
                receipt_id=uuid.uuid4().hex,
                upload_id=upload_id,
                study_uid=reg.study_uid,
                revision=reg.revision,
                medis_code=reg.medis_code,
                instance_count=len(instances),
                stream_sha256=request.stream_sha256,
                received_at=now,
                signature="",
            )
            receipt = unsigned.model_copy(
                update={"signature": self.ca.sign_receipt(receipt_fields(unsigned))}
            )
            if not self.store.commit_upload(upload_id, now, receipt.model_dump_json(), instances):
                raise HubError(409, "Upload committed", f"{upload_id} changed state")
            # The instance files now hold every byte; the parts are no longer needed.
            self.parts.discard(upload_id)
            log.info(
                "committed %s: study %s rev %d, %d instances",
                upload_id,
                reg.study_uid,
                reg.revision,
                len(instances),
            )
            return receipt

    def _split(
        self, upload_id: str, reg: StudyRegistration, request: CommitRequest
    ) -> list[InstanceRow]:
        """Cut the assembled stream back into instance files, checking every hash (422);
        `studies/<upload_id>/` holds them and manifest.json once all are right."""
        final = self.store.study_dir(upload_id)
        shutil.rmtree(final, ignore_errors=True)  # left by a crash before the commit row
        rows: list[InstanceRow] = []

        def build(stream: Assembly, staging: Path) -> None:
            staging.mkdir(mode=0o700, parents=True)
            for entry in request.instances:
                name = _instance_name(entry.sop_instance_uid)
                digest = stream.write(staging / name, entry.size)
                if digest != entry.sha256:
                    raise HubError(
                        422,
                        "Instance hash mismatch",
                        f"{entry.sop_instance_uid} hashes to {digest}, "
                        f"the manifest says {entry.sha256}",
                    )
                rows.append(
                    InstanceRow(
                        upload_id=upload_id,
                        sop_instance_uid=entry.sop_instance_uid,
                        series_uid=entry.series_uid,
                        sop_class_uid=entry.sop_class_uid,
                        offset=entry.offset,
                        size=entry.size,
                        sha256=entry.sha256,
                        path=str(Path("studies") / upload_id / name),
                    )
                )
            digest = stream.finish()
            if digest != request.stream_sha256:
                raise HubError(
                    422,
                    "Stream hash mismatch",
                    f"the stream hashes to {digest}, the manifest says {request.stream_sha256}",
                )
            manifest = {
                "registration": json.loads(canonical(reg)),
                "commit": json.loads(canonical(request)),
            }
            # Written last, so its directory fsync also makes every instance file's entry durable.
            write_public(staging / "manifest.json", json.dumps(manifest, indent=1).encode())

        self.parts.assemble(upload_id, reg.parts, final, build)
        return rows

    def instance_bytes(self, upload_id: str, sop_instance_uid: str) -> bytes:
        row = self.store.instance(upload_id, sop_instance_uid)
        if row is None:
            raise HubError(404, "No such instance", f"{upload_id}/{sop_instance_uid}")
        return (self.store.data_dir / row.path).read_bytes()


def _check_manifest(reg: StudyRegistration, request: CommitRequest) -> None:
    """422 unless the manifest lists the registered number of instances, each once,
    concatenated in order to exactly stream_size bytes."""
    entries = request.instances
    if len(entries) != reg.instance_count:
        raise HubError(
            422,
            "Manifest disagrees",
            f"{len(entries)} instances in the manifest, {reg.instance_count} registered",
        )
    seen: set[str] = set()
    position = 0
    for entry in entries:
        if entry.sop_instance_uid in seen:
            raise HubError(422, "Manifest disagrees", f"{entry.sop_instance_uid} is listed twice")
        seen.add(entry.sop_instance_uid)
        if entry.offset != position:
            raise HubError(
                422,
                "Manifest disagrees",
                f"{entry.sop_instance_uid} starts at {entry.offset}, expected {position} "
                "(instances are concatenated in manifest order)",
            )
        position += entry.size
    if position != reg.stream_size:
        raise HubError(
            422,
            "Manifest disagrees",
            f"the instances add up to {position} bytes, stream_size is {reg.stream_size}",
        )
