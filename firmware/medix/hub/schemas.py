"""Bodies of the reference hub's own admin API (bearer token), beside the protocol's models.

These are not part of the node <-> hub protocol (medix.models); they describe what the
reference hub's operator (a person, a test, a PACS vendor's script) sends and gets back under
`/admin`. Pydantic only, so medix.openapi can render them without importing Flask.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medix.models import AuditEvent, CommandType, Policy, QueueStats, Receipt, UpdateReport


class AdminMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairingCode(AdminMessage):
    code: str = Field(description="one-time pairing code for POST /medix/v1/enrol")
    expires_at: float


class CommandOrder(AdminMessage):
    """A command to queue for a node; `args` are checked against the command's type."""

    type: CommandType
    args: dict[str, object] = {}


class CommandQueued(AdminMessage):
    id: str


class CommandInfo(AdminMessage):
    id: str
    node_id: str
    type: str
    args: dict[str, object]
    state: str = Field(description="pending, delivered, done or failed")
    issued_at: float
    delivered_at: float | None
    completed_at: float | None
    ok: bool | None
    result: dict[str, object] | None
    error: str


class CommandList(AdminMessage):
    commands: tuple[CommandInfo, ...]


class NodeInfo(AdminMessage):
    id: str
    name: str
    fingerprint: str
    software_version: str
    address: str
    enrolled_at: float
    last_heartbeat: float | None
    health: str
    queue: QueueStats | None
    policy_version: int | None
    revoked: bool
    commands_waiting: int
    has_webhook_key: bool = Field(
        description="the node got a webhook signing key at enrolment (the key is never shown)"
    )
    has_api_token: bool = Field(
        description="the hub holds a token for the node's HTTP API (never shown)"
    )
    update: UpdateReport | None = Field(None, description="the node's last system update")


class NodeList(AdminMessage):
    nodes: tuple[NodeInfo, ...]


class StudyInfo(AdminMessage):
    upload_id: str
    node_id: str
    study_uid: str
    revision: int
    medis_code: str
    referring_physician: str
    study_date: str
    study_description: str
    state: str = Field(description="open or committed")
    instance_count: int = Field(description="instances the registration announced")
    stored_instances: int = Field(description="instance files held after commit")
    parts: int
    received_parts: int
    stream_size: int
    created_at: float
    committed_at: float | None
    receipt: Receipt | None


class StudyList(AdminMessage):
    studies: tuple[StudyInfo, ...]


class WebhookEntry(AdminMessage):
    id: int
    vendor: str
    received_at: float
    address: str
    headers: dict[str, str]
    body: dict[str, object]
    node_id: str = Field(
        "", description="X-Medix-Node as sent (empty when absent); trust it only when verified"
    )
    verified: bool = Field(
        False, description="X-Medix-Signature checked out with that node's webhook key"
    )
    outcome: Literal["recorded", "failed"] = Field(
        "recorded", description="failed: answered with an error injected by fail-next"
    )
    answered: int = Field(204, description="the HTTP status the hub answered")


class WebhookList(AdminMessage):
    webhooks: tuple[WebhookEntry, ...]


class AuditEntry(AdminMessage):
    node_id: str
    event: AuditEvent


class AuditList(AdminMessage):
    """Audit records the nodes handed over (oldest first)."""

    records: tuple[AuditEntry, ...]


class WebhookFailNext(AdminMessage):
    """Fault injection: the next `count` webhook posts are answered with `status`."""

    count: int = Field(ge=0, le=1000, description="0 cancels what is still pending")
    status: int = Field(503, ge=400, le=599)


class FileInfo(AdminMessage):
    file_id: str
    node_id: str
    job_id: str
    name: str
    media_type: str
    state: Literal["open", "saved"]
    part_size: int
    received_parts: int
    size: int | None = Field(description="bytes, once saved")
    sha256: str | None = Field(description="SHA-256 of the saved file")
    url: str | None = Field(description="where the hub's user downloads it, once saved")
    path: str | None = Field(description="the saved file on the hub's disk")
    created_at: float
    saved_at: float | None


class FileList(AdminMessage):
    files: tuple[FileInfo, ...]


ADMIN_MODELS: tuple[type[BaseModel], ...] = (
    PairingCode,
    CommandOrder,
    CommandQueued,
    CommandList,
    NodeList,
    StudyList,
    WebhookList,
    AuditList,
    WebhookFailNext,
    FileList,
    Policy,
)


MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256


class PhysicianOrder(AdminMessage):
    """A physician account to make: the login they sign in with, their name exactly as the
    centers' nodes send it (StudyRegistration.referring_physician, e.g. Family^Given; matched
    case-insensitively) and a first password."""

    login: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    password: str = Field(
        repr=False,
        min_length=MIN_PASSWORD_CHARS,
        max_length=MAX_PASSWORD_CHARS,
        description="kept only as an scrypt hash",
    )


class PasswordOrder(AdminMessage):
    """A physician's new password; their sessions end."""

    password: str = Field(repr=False, min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)


class PhysicianInfo(AdminMessage):
    login: str
    name: str
    physician_key: str = Field(description="what the inbox matches referring_physician by")
    created_at: float
    password_set_at: float


class PhysicianList(AdminMessage):
    physicians: tuple[PhysicianInfo, ...]
