"""Medix message models: the one definition both the AFRA node and the reference hub use.

Field names of the seed's node-side API (download, webhook progress) are exact, including
their capitalisation; everything else is this project's own (docs/medix.md). The OpenAPI
document in docs/medix-openapi.json is generated from these models (medix.openapi).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from enum import IntEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROTOCOL_VERSION = "1"
API_PREFIX = "/medix/v1"

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
Uid = Annotated[str, Field(min_length=1, max_length=64, pattern=UID_PATTERN)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
MedisCode = Annotated[str, Field(pattern=r"^[2-9A-HJKMNP-Z]{12}$")]


class DownloadStatus(IntEnum):
    """Progress of a study download, as reported to the hub's webhook (exact values)."""

    RequestFailed = -4
    ExportFailed = -3
    DownloadFailed = -2
    MergeFailed = -1
    ProcessStarted = 0
    RequestSent = 1
    ExportStarted = 2
    CompressStarted = 3
    CompressFinished = 4
    ExportCompleted = 5
    DownloadStarted = 6
    DownloadSaved = 7
    MergeStarted = 8
    MergeCompleted = 10


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- policy ------------------------------------------------------------------------------


class Window(Message):
    """A daily time window in the node's local time; `end` before `start` spans midnight."""

    start: HHMM
    end: HHMM


VERSION_PATTERN = r"^[0-9][0-9A-Za-z.+-]{0,47}$"


class UpdateOffer(Message):
    """A system update the hub offers its nodes: a signed RAUC bundle the hub holds.

    The node fetches it from `GET {API_PREFIX}/updates/{sha256}` over its mutual-TLS link,
    checks the hash, then the signature against the key baked into its image, and installs
    it only when `compatible` is its own and `version` is newer than what it runs."""

    version: str = Field(pattern=VERSION_PATTERN)
    compatible: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._-]+$")
    sha256: Sha256
    size: int = Field(ge=1, le=4 * 2**30)


class Policy(Message):
    """Federation policy, set once at the hub and applied whole by every node."""

    version: int = Field(ge=0)
    bandwidth_cap_kbps: int | None = Field(None, ge=64, description="upload cap; None = no cap")
    offpeak_windows: tuple[Window, ...] = Field(
        (), description="when set, bulk uploads run only inside these windows"
    )
    retention_days: int = Field(7, ge=0, le=3650, description="keep local copies after receipt")
    stale_queue_hours: int = Field(24, ge=1, description="oldest undelivered study -> degraded")
    code_expiry_days: int = Field(90, ge=1, description="hub side: Medis code lifetime")
    code_max_attempts: int = Field(5, ge=1, description="hub side: wrong tries before lockout")
    webhook_hosts: tuple[str, ...] = Field((), description="hosts a download webhook may name")
    update: UpdateOffer | None = Field(None, description="a system update the nodes install")


# -- enrolment and heartbeat --------------------------------------------------------------


class EnrolRequest(Message):
    pairing_code: str = Field(min_length=6, max_length=32)
    node_name: str = Field(min_length=1, max_length=63)
    csr_pem: str = Field(min_length=64, max_length=16384)
    software_version: str = Field(max_length=32)


class EnrolResponse(Message):
    node_id: str
    certificate_pem: str
    ca_pem: str
    policy: Policy
    webhook_key: str = Field(
        "",
        max_length=128,
        description="base64 HMAC-SHA256 key: the node signs download progress with it "
        "(X-Medix-Signature); empty from a hub that does not verify",
    )
    node_api_token: str = Field(
        "",
        max_length=128,
        description="bearer token the hub presents to the node-side HTTP API "
        "(/api/study/...); the node keeps only its hash",
    )


class QueueStats(Message):
    studies_waiting: int = Field(ge=0)
    oldest_waiting_s: float = Field(ge=0)
    bytes_waiting: int = Field(ge=0)


class UpdateReport(Message):
    """Where the node's last system update stands (afra: the update record)."""

    state: str = Field(max_length=32, description="idle, downloading, ..., kept, rolled_back")
    version: str = Field("", max_length=48, description="the version being or last installed")
    progress: int = Field(0, ge=0, le=100)
    message: str = Field("", max_length=500)
    at: float = 0.0


class Heartbeat(Message):
    software_version: str = Field(max_length=48)
    policy_version: int = Field(ge=0)
    health: str = Field(max_length=32)
    queue: QueueStats
    update: UpdateReport | None = None


class HeartbeatResponse(Message):
    hub_time: float
    policy: Policy | None = Field(None, description="present when newer than the node's")
    commands_waiting: int = Field(0, ge=0)


# -- studies ---------------------------------------------------------------------------


class Patient(Message):
    name: str = Field("", max_length=256)
    patient_id: str = Field("", max_length=64)
    birth_date: str = Field("", pattern=r"^([0-9]{8})?$")
    phone: str = Field("", max_length=64)


class StudyRegistration(Message):
    """A study (one revision of it) about to be uploaded, with its Medis code."""

    study_uid: Uid
    revision: int = Field(ge=0)
    medis_code: MedisCode
    patient: Patient
    referring_physician: str = Field("", max_length=256)
    study_date: str = Field("", pattern=r"^([0-9]{8})?$")
    study_description: str = Field("", max_length=256)
    accession_number: str = Field("", max_length=64)
    modalities: tuple[str, ...] = ()
    instance_count: int = Field(ge=1)
    stream_size: int = Field(ge=1, description="bytes of all instance files, concatenated")
    part_size: int = Field(ge=65536, le=8 * 1048576)
    parts: int = Field(ge=1)


class Receipt(Message):
    """The hub's word that a study revision is whole on its side; stored by the node."""

    receipt_id: str
    upload_id: str
    study_uid: Uid
    revision: int
    medis_code: MedisCode
    instance_count: int
    stream_sha256: Sha256
    received_at: float
    signature: str = Field(description="hub CA key's ECDSA signature over the fields above")


class Registration(Message):
    upload_id: str
    state: Literal["open", "committed"]
    received_parts: tuple[int, ...] = Field((), description="part numbers the hub holds")
    receipt: Receipt | None = None


class PartAck(Message):
    part: int
    received_parts: int


class ManifestEntry(Message):
    sop_instance_uid: Uid
    series_uid: Uid
    sop_class_uid: Uid
    offset: int = Field(ge=0)
    size: int = Field(ge=1)
    sha256: Sha256


class CommitRequest(Message):
    instances: tuple[ManifestEntry, ...] = Field(min_length=1)
    stream_sha256: Sha256


# -- files (a prepared download, node -> hub) ---------------------------------------------

FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FileRegistration(Message):
    """A file the node prepared for a hub user (a study zip), about to be uploaded in parts.

    The size is not known yet: the node streams the zip while it is still being written.
    Every part but the last is exactly `part_size` bytes.
    """

    job_id: JobId = Field(description="the node's download job; one file per (node, job_id)")
    name: FileName
    media_type: Literal["application/zip"] = "application/zip"
    part_size: int = Field(ge=65536, le=8 * 1048576)


class FileSaved(Message):
    file_id: str
    url: str = Field(description="where the hub's user downloads the file (the webhook's File)")
    size: int
    sha256: Sha256
    saved_at: float


class FileUpload(Message):
    file_id: str
    state: Literal["open", "saved"]
    received_parts: tuple[int, ...] = ()
    saved: FileSaved | None = None


class FileCommit(Message):
    size: int = Field(ge=1)
    sha256: Sha256
    parts: int = Field(ge=1)


# -- commands (hub -> node, over the node's long poll) ---------------------------------


CommandType = Literal["download", "report_status", "locate", "diagnostics", "apply_policy"]


class Command(Message):
    id: str
    # Plain text on the wire: a node older than its hub must still parse the batch and
    # answer "not supported" for a type it does not know (the hub checks CommandType).
    type: str = Field(max_length=64)
    args: dict[str, object] = {}
    issued_at: float


class CommandBatch(Message):
    commands: tuple[Command, ...] = ()


class CommandResult(Message):
    ok: bool
    result: dict[str, object] = {}
    error: str = ""


# -- node-side API of the seed ----------------------------------------------------------


class WebhookHeaders(Message):
    model_config = ConfigDict(extra="allow", frozen=True)

    authorization: str = Field(max_length=4096)
    userid: str = Field(max_length=256)
    kcode: str = Field(max_length=64)


class DownloadRequest(Message):
    """The seed's request. `StudyInstanceUID` may also be a list (one merged zip); the
    extension `PatientID` asks for all of a patient's studies instead (then the UID is
    omitted)."""

    StudyInstanceUID: Uid | tuple[Uid, ...] | None = None
    PatientID: str | None = Field(None, min_length=1, max_length=64)
    WebhookUri: str = Field(max_length=2048)
    WebhookHeaders: WebhookHeaders

    @model_validator(mode="after")
    def _one_subject(self) -> DownloadRequest:
        if (self.StudyInstanceUID is None) == (self.PatientID is None):
            raise ValueError("give either StudyInstanceUID (one or a list) or PatientID")
        if isinstance(self.StudyInstanceUID, tuple) and not 1 <= len(self.StudyInstanceUID) <= 50:
            raise ValueError("a list of StudyInstanceUID holds 1 to 50 UIDs")
        return self

    @field_validator("WebhookUri")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("WebhookUri must be an absolute http(s) URL")
        return value


class DownloadAccepted(Message):
    job_id: str
    joined: bool = Field(description="true when an identical running job was joined")
    Status: str = Field("0", description="the job's latest status so far (seed numbering)")


class WebhookProgress(Message):
    """Body the node posts to WebhookUri at each step (seed format; Status as a string)."""

    Status: str
    headers: dict[str, str]
    File: str = ""


class ReportStatusRequest(Message):
    StudyInstanceUIDs: tuple[Uid, ...] = Field(min_length=1, max_length=1000)


class ReportStatus(Message):
    StudyInstanceUID: Uid
    HasReport: bool
    Count: int = Field(ge=0)
    Kinds: tuple[Literal["SR", "PDF", "PACS"], ...] = ()
    LatestAt: str | None = Field(None, description="ISO 8601, when the newest report was made")
    Source: Literal["node", "pacs", "unknown"]


class ReportStatusResponse(Message):
    Studies: tuple[ReportStatus, ...]


# -- audit (DICOM PS3.15 A.5 audit messages, as JSON) --------------------------------------


class AuditCode(Message):
    """A coded value: DICOM's (code, "DCM", meaning), or RFC 3881's (code, "RFC-3881", ...)."""

    code: str = Field(max_length=16)
    system: str = Field("DCM", max_length=16)
    meaning: str = Field(max_length=64)


class AuditParticipant(Message):
    """ActiveParticipant: who or what took part (a user, an AE, the box, the hub)."""

    user_id: str = Field(max_length=256)
    name: str = Field("", max_length=256, description="AlternativeUserID or the person's name")
    requestor: bool = False
    address: str = Field("", max_length=256, description="NetworkAccessPointID")
    address_type: Literal[1, 2] = Field(2, description="1 machine name, 2 IP address")
    role: AuditCode | None = None


class AuditObject(Message):
    """ParticipantObjectIdentification: what was touched (a study by UID, a patient by ID)."""

    id: str = Field(max_length=256)
    type: Literal[1, 2, 3, 4] = Field(2, description="1 person, 2 system object, 3 org, 4 other")
    role: int = Field(3, ge=1, le=24, description="1 patient, 3 report, 13 security resource...")
    id_type: AuditCode
    name: str = Field("", max_length=256)
    details: dict[str, str] = Field(default_factory=dict, max_length=16)


class AuditEvent(Message):
    """One audit record: who, what, when, where, the outcome and the objects by UID."""

    seq: int = Field(ge=1, description="the node's own sequence number, gap-free")
    event: AuditCode
    action: Literal["C", "R", "U", "D", "E"]
    at: str = Field(max_length=40, description="EventDateTime, ISO 8601 with its offset")
    outcome: Literal[0, 4, 8, 12] = Field(0, description="0 success ... 12 major failure")
    outcome_text: str = Field("", max_length=500)
    types: tuple[AuditCode, ...] = Field((), max_length=4)
    source: str = Field(max_length=64, description="AuditSourceID: the box")
    participants: tuple[AuditParticipant, ...] = Field(max_length=8)
    objects: tuple[AuditObject, ...] = Field((), max_length=64)


class AuditBatch(Message):
    events: tuple[AuditEvent, ...] = Field(min_length=1, max_length=500)


class AuditAck(Message):
    through: int = Field(ge=0, description="the batch's last seq: held by the hub")


class Problem(Message):
    """Every error response (RFC 9457 style)."""

    title: str
    detail: str = ""
    status: int


# -- webhook signature (an extension the hub may verify) ------------------------------------

SIGNATURE_HEADER = "X-Medix-Signature"
TIMESTAMP_HEADER = "X-Medix-Timestamp"
NODE_HEADER = "X-Medix-Node"


def webhook_signature(key_b64: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the enrolment's webhook key over `timestamp.body`."""
    key = base64.b64decode(key_b64)
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"
