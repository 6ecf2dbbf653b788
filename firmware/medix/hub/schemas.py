"""Bodies of the reference hub's own admin API (bearer token), beside the protocol's models.

These are not part of the node <-> hub protocol (medix.models); they describe what the
reference hub's operator (a person, a test, a PACS vendor's script) sends and gets back under
`/admin`. Pydantic only, so medix.openapi can render them without importing Flask.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from medix.models import CommandType, Policy, QueueStats, Receipt


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


class WebhookList(AdminMessage):
    webhooks: tuple[WebhookEntry, ...]


ADMIN_MODELS: tuple[type[BaseModel], ...] = (
    PairingCode,
    CommandOrder,
    CommandQueued,
    CommandList,
    NodeList,
    StudyList,
    WebhookList,
    Policy,
)
