"""`Hub`: the reference hub's behaviour without HTTP, one facade over the parts that own it.

`Hub` opens what the parts share (the store, the CA, the throttle, the physicians' desk, the
update shelf) and hands each part what it needs; its methods are the calls the Flask layer
(medix.hub.app) and `HubServer` make, each passed to the part that owns it:

  policy      Policies: the published policy and the update bundles it offers
  nodes       NodeRegistry: pairing codes, enrolment, node identity, heartbeats, audit intake
  commands    Commands: the command queue and the nodes' long polls
  uploads     StudyUploads: study registrations, parts, commits and receipts
  files       FileUploads: files nodes prepare for the hub's users, and their download
  access      StudyAccess: the patient page, the physician inbox, download links, rate limits
  webhooks    WebhookLog: download progress posts, signatures, fail-next
  listings    Listings: what the admin API lists

Both multipart flows (uploads, files) receive and assemble their parts through
medix.hub.multipart. Every refusal is a `HubError` carrying the HTTP status, so the same rules
hold for the Flask routes and for `HubServer`'s direct helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medix.clock import Clock, SystemClock
from medix.hub import schemas
from medix.hub.access import PatientStudy, StudyAccess
from medix.hub.ca import HubCA, read_or_make_token
from medix.hub.commands import Commands
from medix.hub.files import FileUploads
from medix.hub.listings import Listings
from medix.hub.nodes import NodeRegistry
from medix.hub.physicians import Physicians, SessionSettings
from medix.hub.policy import Policies
from medix.hub.store import HubStore, NodeRow
from medix.hub.throttle import RateLimits, Throttle
from medix.hub.updates import UpdateShelf
from medix.hub.uploads import StudyUploads
from medix.hub.webhooks import WebhookLog
from medix.models import (
    AuditAck,
    AuditBatch,
    CommandBatch,
    CommandResult,
    CommitRequest,
    EnrolRequest,
    EnrolResponse,
    FileCommit,
    FileRegistration,
    FileSaved,
    FileUpload,
    Heartbeat,
    HeartbeatResponse,
    PartAck,
    Policy,
    Receipt,
    Registration,
    StudyRegistration,
    UpdateOffer,
    WebhookProgress,
)

__all__ = ["Hub", "HubConfig", "PatientStudy"]

DEFAULT_RATE_LIMITS = RateLimits()
DEFAULT_SESSIONS = SessionSettings()
ReadBody = Callable[[int], bytes]


@dataclass(frozen=True)
class HubConfig:
    """How one reference hub runs; everything but `data_dir` has a usable default."""

    data_dir: Path = Path("data/hub")
    admin_token: str | None = None  # None: read or make `<data_dir>/admin-token`
    hub_name: str = "Reference hub"
    pairing_code_ttl_s: float = 86400.0
    public_url: str = ""  # where people reach the hub; links are relative when empty
    server_names: tuple[str, ...] = ()  # extra SubjectAltNames for the TLS certificate
    max_json_bytes: int = 16 << 20
    max_stream_bytes: int = 1 << 40
    rate_limits: RateLimits = DEFAULT_RATE_LIMITS  # patient-facing pages, per client address
    sessions: SessionSettings = DEFAULT_SESSIONS  # physicians' sign-in sessions


class Hub:
    """One reference hub's state and rules; thread-safe; `close()` when done."""

    def __init__(self, config: HubConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = HubStore(config.data_dir)
        self.ca = HubCA(
            config.data_dir / "ca", hub_name=config.hub_name, server_names=config.server_names
        )
        self.admin_token = config.admin_token or read_or_make_token(config.data_dir / "admin-token")
        link_key = self.ca.new_secret("links.key")
        self.throttle = Throttle(config.rate_limits, self.clock)
        self.physicians = Physicians(
            self.store,
            self.clock,
            self.throttle,
            self.ca.new_secret("forms.key"),
            config.sessions,
        )
        self.updates = UpdateShelf(config.data_dir / "updates")
        tmp_dir = config.data_dir / "tmp"
        tmp_dir.mkdir(mode=0o700, exist_ok=True)
        most = config.max_stream_bytes
        self.policies = Policies(self.store, self.updates, self.clock)
        self.registry = NodeRegistry(
            self.store,
            self.ca,
            self.policies,
            self.clock,
            pairing_code_ttl_s=config.pairing_code_ttl_s,
        )
        self.commands = Commands(self.store, self.clock)
        self.uploads = StudyUploads(self.store, self.ca, self.clock, max_stream_bytes=most)
        self.file_uploads = FileUploads(
            self.store,
            self.clock,
            max_stream_bytes=most,
            public_url=config.public_url.rstrip("/"),
        )
        self.access = StudyAccess(
            self.store, self.policies, self.throttle, self.clock, link_key=link_key, tmp_dir=tmp_dir
        )
        self.webhook_log = WebhookLog(self.store, self.clock)
        self.listings = Listings(self.store, self.file_uploads)

    @property
    def admin_token_path(self) -> Path | None:
        """Where the admin token is kept; None when the configuration gave it."""
        return None if self.config.admin_token else self.config.data_dir / "admin-token"

    @property
    def public_url(self) -> str:
        """Where people reach the hub (saved files' links); `HubServer` sets it on start."""
        return self.file_uploads.public_url

    @public_url.setter
    def public_url(self, url: str) -> None:
        self.file_uploads.public_url = url

    def begin_shutdown(self) -> None:
        """Release every long poll now, so the server can stop without waiting them out."""
        self.commands.release_polls()

    def close(self) -> None:
        self.begin_shutdown()
        self.store.close()

    # -- policy and updates (Policies) -------------------------------------------------------

    def policy(self) -> Policy:
        return self.policies.policy()

    def publish_policy(self, policy: Policy) -> Policy:
        return self.policies.publish_policy(policy)

    def add_update(
        self, chunks: Iterable[bytes], *, version: str, compatible: str, limit: int
    ) -> UpdateOffer:
        return self.policies.add_update(chunks, version=version, compatible=compatible, limit=limit)

    def publish_update(self, offer: UpdateOffer) -> Policy:
        return self.policies.publish_update(offer)

    def update_bundle(self, node: NodeRow, sha256: str) -> Path:
        return self.policies.update_bundle(node, sha256)

    # -- nodes (NodeRegistry) ----------------------------------------------------------------

    def new_pairing_code(self) -> schemas.PairingCode:
        return self.registry.new_pairing_code()

    def enrol(self, request: EnrolRequest, address: str) -> EnrolResponse:
        return self.registry.enrol(request, address)

    def node_api_token(self, node_id: str) -> str:
        return self.registry.node_api_token(node_id)

    def node_for_certificate(self, certificate_pem: str | None) -> NodeRow:
        return self.registry.node_for_certificate(certificate_pem)

    def revoke_node(self, node_id: str) -> None:
        self.registry.revoke_node(node_id)

    def heartbeat(self, node: NodeRow, beat: Heartbeat) -> HeartbeatResponse:
        return self.registry.heartbeat(node, beat)

    def audit(self, node: NodeRow, batch: AuditBatch) -> AuditAck:
        return self.registry.audit(node, batch)

    # -- commands (Commands) -----------------------------------------------------------------

    def queue_command(self, node_id: str, type_: str, args: dict[str, object]) -> str:
        return self.commands.queue_command(node_id, type_, args)

    def poll_commands(self, node: NodeRow, wait: float) -> CommandBatch:
        return self.commands.poll_commands(node, wait)

    def command_result(self, node: NodeRow, command_id: str, result: CommandResult) -> None:
        self.commands.command_result(node, command_id, result)

    def node_commands(self, node_id: str) -> schemas.CommandList:
        return self.commands.node_commands(node_id)

    # -- study uploads (StudyUploads) --------------------------------------------------------

    def register(self, node: NodeRow, reg: StudyRegistration) -> tuple[Registration, bool]:
        return self.uploads.register(node, reg)

    def upload_state(self, node: NodeRow, upload_id: str) -> Registration:
        return self.uploads.upload_state(node, upload_id)

    def put_part(
        self, node: NodeRow, upload_id: str, n: int, read_body: ReadBody, encoding: str, sha: str
    ) -> PartAck:
        return self.uploads.put_part(node, upload_id, n, read_body, encoding, sha)

    def commit(self, node: NodeRow, upload_id: str, request: CommitRequest) -> Receipt:
        return self.uploads.commit(node, upload_id, request)

    def instance_bytes(self, upload_id: str, sop_instance_uid: str) -> bytes:
        return self.uploads.instance_bytes(upload_id, sop_instance_uid)

    # -- files (FileUploads) -----------------------------------------------------------------

    def register_file(self, node: NodeRow, reg: FileRegistration) -> tuple[FileUpload, bool]:
        return self.file_uploads.register_file(node, reg)

    def file_state(self, node: NodeRow, file_id: str) -> FileUpload:
        return self.file_uploads.file_state(node, file_id)

    def put_file_part(
        self, node: NodeRow, file_id: str, n: int, read_body: ReadBody, encoding: str, sha: str
    ) -> PartAck:
        return self.file_uploads.put_file_part(node, file_id, n, read_body, encoding, sha)

    def commit_file(self, node: NodeRow, file_id: str, request: FileCommit) -> FileSaved:
        return self.file_uploads.commit_file(node, file_id, request)

    def file_url(self, file_id: str, name: str) -> str:
        return self.file_uploads.file_url(file_id, name)

    def saved_file(self, file_id: str, name: str) -> tuple[Path, str]:
        return self.file_uploads.saved_file(file_id, name)

    # -- patients and physicians (StudyAccess) -----------------------------------------------

    def admit(self, client: str) -> None:
        self.access.admit(client)

    def guessing(self, client: str) -> AbstractContextManager[None]:
        return self.access.guessing(client)

    def patient_access(self, code_text: str, birth_text: str, address: str) -> list[PatientStudy]:
        return self.access.patient_access(code_text, birth_text, address)

    def physician_studies(self, physician: str) -> list[PatientStudy]:
        return self.access.physician_studies(physician)

    def download_token(self, medis_code: str) -> str:
        return self.access.download_token(medis_code)

    def study_zip(self, token: str) -> tuple[IO[bytes], str]:
        return self.access.study_zip(token)

    # -- webhooks (WebhookLog) ---------------------------------------------------------------

    def record_webhook(
        self,
        vendor: str,
        progress: WebhookProgress,
        headers: dict[str, str],
        address: str,
        body: bytes,
    ) -> bool:
        return self.webhook_log.record_webhook(vendor, progress, headers, address, body)

    def fail_webhooks(self, count: int, status: int = 503) -> schemas.WebhookFailNext:
        return self.webhook_log.fail_webhooks(count, status)

    # -- admin listings (Listings) -----------------------------------------------------------

    def nodes(self) -> schemas.NodeList:
        return self.listings.nodes()

    def studies(self) -> schemas.StudyList:
        return self.listings.studies()

    def files(self) -> schemas.FileList:
        return self.listings.files()

    def webhooks(self) -> schemas.WebhookList:
        return self.listings.webhooks()

    def audit_records(self, node_id: str | None = None) -> schemas.AuditList:
        return self.listings.audit_records(node_id)
