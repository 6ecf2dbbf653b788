"""What the admin API lists (`GET /admin/...`): nodes, studies, files, the webhook log and
the audit records nodes handed over, as medix.hub.schemas bodies. Read-only views over the
store; nothing here changes state."""

from __future__ import annotations

import json

from medix.hub import schemas
from medix.hub.files import FileUploads
from medix.hub.store import HubStore
from medix.models import (
    AuditEvent,
    FileRegistration,
    QueueStats,
    Receipt,
    StudyRegistration,
    UpdateReport,
)


class Listings:
    """The admin's views of the hub's state."""

    def __init__(self, store: HubStore, files: FileUploads) -> None:
        self.store = store
        self.file_uploads = files

    def nodes(self) -> schemas.NodeList:
        infos = []
        for row in self.store.nodes():
            queue = None
            if row.last_heartbeat is not None:
                queue = QueueStats.model_validate_json(row.queue_json)
            infos.append(
                schemas.NodeInfo(
                    id=row.id,
                    name=row.name,
                    fingerprint=row.fingerprint,
                    software_version=row.software_version,
                    address=row.address,
                    enrolled_at=row.enrolled_at,
                    last_heartbeat=row.last_heartbeat,
                    health=row.health,
                    queue=queue,
                    policy_version=row.policy_version,
                    revoked=row.revoked,
                    commands_waiting=self.store.waiting_commands(row.id),
                    has_webhook_key=bool(row.webhook_key),
                    has_api_token=bool(row.api_token),
                    update=(
                        UpdateReport.model_validate_json(row.update_json)
                        if row.update_json
                        else None
                    ),
                )
            )
        return schemas.NodeList(nodes=tuple(infos))

    def studies(self) -> schemas.StudyList:
        infos = []
        for row in self.store.uploads():
            reg = StudyRegistration.model_validate_json(row.registration_json)
            receipt = Receipt.model_validate_json(row.receipt_json) if row.receipt_json else None
            infos.append(
                schemas.StudyInfo(
                    upload_id=row.upload_id,
                    node_id=row.node_id,
                    study_uid=row.study_uid,
                    revision=row.revision,
                    medis_code=row.medis_code,
                    referring_physician=reg.referring_physician,
                    study_date=reg.study_date,
                    study_description=reg.study_description,
                    state=row.state,
                    instance_count=reg.instance_count,
                    stored_instances=len(self.store.instances(row.upload_id)),
                    parts=reg.parts,
                    received_parts=self.store.count_parts(row.upload_id),
                    stream_size=reg.stream_size,
                    created_at=row.created_at,
                    committed_at=row.committed_at,
                    receipt=receipt,
                )
            )
        return schemas.StudyList(studies=tuple(infos))

    def files(self) -> schemas.FileList:
        infos = []
        for row in self.store.files():
            saved = self.file_uploads.file_saved(row)
            reg = FileRegistration.model_validate_json(row.registration_json)
            infos.append(
                schemas.FileInfo(
                    file_id=row.file_id,
                    node_id=row.node_id,
                    job_id=row.job_id,
                    name=row.name,
                    media_type=reg.media_type,
                    state="saved" if saved is not None else "open",
                    part_size=row.part_size,
                    received_parts=len(self.store.file_parts(row.file_id)),
                    size=row.size,
                    sha256=row.sha256,
                    url=None if saved is None else saved.url,
                    path=None
                    if saved is None
                    else str(self.store.file_dir(row.file_id) / row.name),
                    created_at=row.created_at,
                    saved_at=row.saved_at,
                )
            )
        return schemas.FileList(files=tuple(infos))

    def webhooks(self) -> schemas.WebhookList:
        return schemas.WebhookList(
            webhooks=tuple(
                schemas.WebhookEntry(
                    id=row.id,
                    vendor=row.vendor,
                    received_at=row.received_at,
                    address=row.address,
                    headers=json.loads(row.headers_json),
                    body=json.loads(row.body_json),
                    node_id=row.node_id,
                    verified=row.verified,
                    outcome="recorded" if row.answered < 300 else "failed",
                    answered=row.answered,
                )
                for row in self.store.webhooks()
            )
        )

    def audit_records(self, node_id: str | None = None) -> schemas.AuditList:
        return schemas.AuditList(
            records=tuple(
                schemas.AuditEntry(node_id=n, event=AuditEvent.model_validate_json(body))
                for n, _seq, body in self.store.audit(node_id)
            )
        )
