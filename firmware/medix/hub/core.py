"""The hub's behaviour, without HTTP: enrolment, heartbeats, uploads and receipts, files
nodes prepare for the hub's users, commands, the patient and physician views, the webhook log
(with signature checks and fault injection) and policy.

`Hub` owns the store, the CA and the long-poll condition; the Flask layer (medix.hub.app)
parses requests, calls one method and renders the answer. Every refusal is a `HubError`
carrying the HTTP status, so the same rules hold for the Flask routes and for `HubServer`'s
direct helpers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medix.clock import Clock, SystemClock
from medix.durable import fsync_dir, write_public
from medix.hub import schemas
from medix.hub.ca import CSRError, HubCA, fingerprint, read_or_make_token
from medix.hub.errors import HubError
from medix.hub.physicians import Physicians, SessionSettings, physician_key
from medix.hub.store import (
    COMMITTED,
    SAVED,
    CommandRow,
    FileRow,
    HubStore,
    InstanceRow,
    NodeRow,
    StaleError,
    UploadRow,
)
from medix.hub.throttle import RateLimits, Throttle, retry_after
from medix.hub.updates import UpdateShelf
from medix.models import (
    NODE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuditAck,
    AuditBatch,
    AuditEvent,
    Command,
    CommandBatch,
    CommandResult,
    CommitRequest,
    DownloadRequest,
    DownloadStatus,
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
    QueueStats,
    Receipt,
    Registration,
    ReportStatusRequest,
    StudyRegistration,
    UpdateOffer,
    UpdateReport,
    WebhookProgress,
    webhook_signature,
)
from medix.receipts import receipt_fields

log = logging.getLogger(__name__)

PAIRING_FAILURE_LIMIT = 5
PAIRING_FAILURE_WINDOW_S = 600.0
# Wrong Medis code tries count for a day: long enough to stop guessing, short enough that a
# patient who mistyped is not locked out for good.
CODE_ATTEMPT_WINDOW_S = 86400.0
MAX_POLL_WAIT_S = 60
# A command delivered on a poll whose answer got lost is offered again after this long
# without a result; nodes recognise repeats by command id.
REDELIVER_AFTER_S = 300.0
DOWNLOAD_LINK_TTL_S = 3600.0
DAY_S = 86400.0
COPY_CHUNK = 1 << 20
# zstd's worst case for incompressible input is a few bytes per 128 KiB block; 1/128 plus a
# constant is a generous bound on a compressed part.
COMPRESSED_SLACK_DIVISOR = 128
COMPRESSED_SLACK_BYTES = 4096
# The decompressor may not allocate windows beyond what a part needs; a frame asking for
# more is refused rather than trusted (decompression bombs).
ZSTD_MAX_WINDOW = 1 << 24
ENCODINGS = ("identity", "zstd")
UPLOAD_LOCK_STRIPES = 64
_SEPARATORS = frozenset(" \t\r\n\u00a0-.\u2010\u2011\u2012\u2013\u2014\u2212_/")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
PAIRING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PAIRING_LENGTH = 12
WEBHOOK_KEY_BYTES = 32
API_TOKEN_BYTES = 32
# A signed webhook post is accepted this far from the hub's clock, either way: enough for
# clock skew and retries in flight, short enough that a captured post soon goes stale.
WEBHOOK_MAX_SKEW_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# A file id is the capability in the hub user's download URL: 192 random bits.
FILE_ID_BYTES = 24
MISSING_SHOWN = 100
DEFAULT_RATE_LIMITS = RateLimits()
DEFAULT_SESSIONS = SessionSettings()


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


@dataclass(frozen=True)
class PatientStudy:
    """One committed upload as the patient and physician pages show it."""

    upload_id: str
    medis_code: str
    study_uid: str
    revision: int
    study_date: str
    study_description: str
    modalities: tuple[str, ...]
    instance_count: int
    patient_name: str
    referring_physician: str
    download_token: str


def normalise_code(text: str) -> str:
    """A code as typed -> upper case, separators dropped, any script's digits as ASCII."""
    out = []
    for char in text:
        if char in _SEPARATORS:
            continue
        out.append(str(int(char)) if char.isdecimal() else char.translate(_ASCII_UPPER))
    return "".join(out)


def format_code(code: str, group: int = 4) -> str:
    return "-".join(code[i : i + group] for i in range(0, len(code), group))


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _canonical(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def validation_detail(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _last_part_size(reg: StudyRegistration) -> int:
    return reg.stream_size - reg.part_size * (reg.parts - 1)


def _expected_part_size(reg: StudyRegistration, n: int) -> int:
    return reg.part_size if n < reg.parts - 1 else _last_part_size(reg)


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
    """Part `n` of an upload (study or file), uncompressed and checked against its claimed hash:
    (bytes, sha256 hex). 400 without a usable hash header, 415 for an unknown encoding (both
    before the body is read), `too_large_status` when it inflates beyond `part_size`, 422 when
    the hash differs."""
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


def _missing_detail(held: set[int], parts: int) -> str:
    """`missing parts: 2, 3` (the first MISSING_SHOWN, then how many more)."""
    missing_count = parts - sum(1 for n in held if n < parts)
    missing = itertools.islice((n for n in range(parts) if n not in held), MISSING_SHOWN)
    shown = ", ".join(str(n) for n in missing)
    more = f" and {missing_count - MISSING_SHOWN} more" if missing_count > MISSING_SHOWN else ""
    return f"missing parts: {shown}{more}"


def _header(headers: dict[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value.strip()
    return ""


class Hub:
    """One reference hub's state and rules; thread-safe; `close()` when done."""

    def __init__(self, config: HubConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.public_url = config.public_url.rstrip("/")
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = HubStore(config.data_dir)
        self.ca = HubCA(
            config.data_dir / "ca", hub_name=config.hub_name, server_names=config.server_names
        )
        self.admin_token = config.admin_token or self._stored_admin_token()
        self._link_key = self.ca.new_secret("links.key")
        self.throttle = Throttle(config.rate_limits, self.clock)
        self.physicians = Physicians(
            self.store,
            self.clock,
            self.throttle,
            self.ca.new_secret("forms.key"),
            config.sessions,
        )
        self.updates = UpdateShelf(config.data_dir / "updates")
        self._tmp_dir = config.data_dir / "tmp"
        self._tmp_dir.mkdir(mode=0o700, exist_ok=True)
        self._commands = threading.Condition()
        self._closing = threading.Event()
        self._upload_locks = tuple(threading.Lock() for _ in range(UPLOAD_LOCK_STRIPES))
        # Webhook fault injection (admin fail-next): how many posts still fail, and how.
        self._faults_lock = threading.Lock()
        self._fail_count = 0
        self._fail_status = 503
        if self.store.latest_policy() is None:
            self.store.add_policy(0, Policy(version=0).model_dump_json(), self.clock.time())

    def _stored_admin_token(self) -> str:
        return read_or_make_token(self.config.data_dir / "admin-token")

    @property
    def admin_token_path(self) -> Path | None:
        return None if self.config.admin_token else self.config.data_dir / "admin-token"

    def begin_shutdown(self) -> None:
        """Release every long poll now, so the server can stop without waiting them out."""
        self._closing.set()
        with self._commands:
            self._commands.notify_all()

    def close(self) -> None:
        self.begin_shutdown()
        self.store.close()

    # -- policy ------------------------------------------------------------------------------

    def policy(self) -> Policy:
        latest = self.store.latest_policy()
        if latest is None:
            return Policy(version=0)
        return Policy.model_validate_json(latest[1])

    def publish_policy(self, policy: Policy) -> Policy:
        try:
            self.store.add_policy(policy.version, policy.model_dump_json(), self.clock.time())
        except StaleError as exc:
            raise HubError(409, "Stale policy version", str(exc)) from exc
        log.info("published policy version %d", policy.version)
        return policy

    # -- enrolment and node identity ---------------------------------------------------------

    def new_pairing_code(self) -> schemas.PairingCode:
        code = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_LENGTH))
        now = self.clock.time()
        expires_at = now + self.config.pairing_code_ttl_s
        self.store.add_pairing_code(_hash_code(code), now, expires_at)
        return schemas.PairingCode(code=format_code(code), expires_at=expires_at)

    def enrol(self, request: EnrolRequest, address: str) -> EnrolResponse:
        now = self.clock.time()
        since = now - PAIRING_FAILURE_WINDOW_S
        if self.store.pairing_failures(address, since) >= PAIRING_FAILURE_LIMIT:
            raise HubError(
                429,
                "Too many wrong pairing codes",
                f"{PAIRING_FAILURE_LIMIT} wrong codes from {address} in "
                f"{int(PAIRING_FAILURE_WINDOW_S / 60)} minutes; wait and try again",
                {"Retry-After": str(int(PAIRING_FAILURE_WINDOW_S))},
            )
        # The CSR is checked before the code is spent: a node with a broken CSR keeps its code.
        try:
            self.ca.check_csr(request.csr_pem)
        except CSRError as exc:
            raise HubError(422, "Unusable CSR", str(exc)) from exc
        node_id = f"node-{secrets.token_hex(6)}"
        code_hash = _hash_code(normalise_code(request.pairing_code))
        if not self.store.use_pairing_code(code_hash, now, node_id):
            self.store.add_pairing_failure(address, now)
            raise HubError(
                403, "Pairing code refused", "the code is wrong, expired or already used"
            )
        certificate_pem = self.ca.sign_csr(request.csr_pem, node_id)
        webhook_key = base64.b64encode(secrets.token_bytes(WEBHOOK_KEY_BYTES)).decode("ascii")
        api_token = secrets.token_urlsafe(API_TOKEN_BYTES)
        self.store.add_node(
            node_id,
            request.node_name,
            fingerprint(certificate_pem),
            certificate_pem,
            request.software_version,
            address,
            now,
            webhook_key=webhook_key,
            api_token=api_token,
        )
        log.info("enrolled %s (%s) from %s", node_id, request.node_name, address)
        return EnrolResponse(
            node_id=node_id,
            certificate_pem=certificate_pem,
            ca_pem=self.ca.ca_pem,
            policy=self.policy(),
            webhook_key=webhook_key,
            node_api_token=api_token,
        )

    def node_api_token(self, node_id: str) -> str:
        """The bearer token the hub presents to `node_id`'s HTTP API (404 when it has none)."""
        node = self.store.node(node_id)
        if node is None:
            raise HubError(404, "No such node", node_id)
        if not node.api_token:
            raise HubError(404, "No API token", f"{node_id} was enrolled before tokens existed")
        return node.api_token

    def node_for_certificate(self, certificate_pem: str | None) -> NodeRow:
        """The enrolled, unrevoked node a client certificate names; 401 otherwise."""
        if not certificate_pem:
            raise HubError(401, "Client certificate required", "enrol first, then use mTLS")
        try:
            node = self.store.node_by_fingerprint(fingerprint(certificate_pem))
        except ValueError as exc:
            raise HubError(401, "Unreadable client certificate", str(exc)) from exc
        if node is None:
            raise HubError(401, "Unknown node", "this certificate was not issued to a node")
        if node.revoked:
            raise HubError(401, "Node revoked", f"{node.id} has been revoked at the hub")
        return node

    def revoke_node(self, node_id: str) -> None:
        if not self.store.revoke_node(node_id):
            raise HubError(404, "No such node", node_id)

    def audit(self, node: NodeRow, batch: AuditBatch) -> AuditAck:
        """Keep a node's audit records (each seq once: a batch sent again is harmless)."""
        events = [(e.seq, e.model_dump_json()) for e in batch.events]
        return AuditAck(through=self.store.add_audit(node.id, events, self.clock.time()))

    def audit_records(self, node_id: str | None = None) -> schemas.AuditList:
        return schemas.AuditList(
            records=tuple(
                schemas.AuditEntry(node_id=n, event=AuditEvent.model_validate_json(body))
                for n, _seq, body in self.store.audit(node_id)
            )
        )

    def heartbeat(self, node: NodeRow, beat: Heartbeat) -> HeartbeatResponse:
        now = self.clock.time()
        self.store.record_heartbeat(
            node.id,
            now,
            beat.health,
            beat.queue.model_dump_json(),
            beat.software_version,
            beat.policy_version,
            beat.update.model_dump_json() if beat.update is not None else "",
        )
        policy = self.policy()
        return HeartbeatResponse(
            hub_time=now,
            policy=policy if policy.version > beat.policy_version else None,
            commands_waiting=self.store.waiting_commands(node.id),
        )

    # -- uploads -----------------------------------------------------------------------------

    @contextmanager
    def _upload_lock(self, upload_id: str) -> Iterator[None]:
        """Serialise part writes and commits of one upload (striped: bounded memory)."""
        stripe = int(hashlib.sha256(upload_id.encode()).hexdigest()[:8], 16)
        with self._upload_locks[stripe % UPLOAD_LOCK_STRIPES]:
            yield

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
        self._check_size("Study", "stream_size", reg.stream_size, reg.part_size, reg.parts)
        body = _canonical(reg)
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
        upload = self._own_upload(node, upload_id)
        reg = StudyRegistration.model_validate_json(upload.registration_json)
        if not 0 <= n < reg.parts:
            raise HubError(422, "No such part", f"parts are numbered 0..{reg.parts - 1}")
        data, digest = receive_part(n, read_body, encoding, sha256_header, reg.part_size)
        expected = _expected_part_size(reg, n)
        if len(data) != expected:
            raise HubError(
                422, "Wrong part size", f"part {n} must be {expected} bytes, not {len(data)}"
            )
        with self._upload_lock(upload_id):
            upload = self._own_upload(node, upload_id)
            held = {p.n: p for p in self.store.parts(upload_id)}
            if upload.state == COMMITTED:
                if n in held and held[n].sha256 == digest:
                    return PartAck(part=n, received_parts=len(held))
                raise HubError(409, "Upload committed", f"{upload_id} is already committed")
            if n not in held or held[n].sha256 != digest:
                self.store.part_dir(upload_id).mkdir(mode=0o700, exist_ok=True)
                write_public(self.store.part_path(upload_id, n), data)
                self.store.put_part(upload_id, n, digest, len(data), self.clock.time())
            return PartAck(part=n, received_parts=self.store.count_parts(upload_id))

    def commit(self, node: NodeRow, upload_id: str, request: CommitRequest) -> Receipt:
        with self._upload_lock(upload_id):
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
            held = {p.n for p in self.store.parts(upload_id)}
            if any(n not in held for n in range(reg.parts)):
                raise HubError(409, "Parts missing", _missing_detail(held, reg.parts))
            self._check_manifest(reg, request)
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
            shutil.rmtree(self.store.part_dir(upload_id), ignore_errors=True)
            log.info(
                "committed %s: study %s rev %d, %d instances",
                upload_id,
                reg.study_uid,
                reg.revision,
                len(instances),
            )
            return receipt

    @staticmethod
    def _check_manifest(reg: StudyRegistration, request: CommitRequest) -> None:
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
                raise HubError(
                    422, "Manifest disagrees", f"{entry.sop_instance_uid} is listed twice"
                )
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

    def _read_stream(self, upload_id: str, reg: StudyRegistration) -> Iterator[bytes]:
        for n in range(reg.parts):
            with open(self.store.part_path(upload_id, n), "rb") as handle:
                while chunk := handle.read(COPY_CHUNK):
                    yield chunk

    def _split(
        self, upload_id: str, reg: StudyRegistration, request: CommitRequest
    ) -> list[InstanceRow]:
        """Cut the assembled stream back into instance files, checking every hash (422)."""
        final = self.store.study_dir(upload_id)
        staging = final.with_name(final.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # left by a crash before the commit row
        staging.mkdir(mode=0o700, parents=True)
        stream_hash = hashlib.sha256()
        rows: list[InstanceRow] = []
        entries = iter(request.instances)
        entry = next(entries)
        name = hashlib.sha256(entry.sop_instance_uid.encode()).hexdigest() + ".dcm"
        out: IO[bytes] = open(staging / name, "wb")  # noqa: SIM115 - rotated per instance
        instance_hash = hashlib.sha256()
        left = entry.size
        try:
            for chunk in self._read_stream(upload_id, reg):
                stream_hash.update(chunk)
                view = memoryview(chunk)
                while view:
                    take = view[:left]
                    out.write(take)
                    instance_hash.update(take)
                    left -= len(take)
                    view = view[len(take) :]
                    if left:
                        continue
                    out.flush()
                    os.fsync(out.fileno())
                    out.close()
                    digest = instance_hash.hexdigest()
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
                    next_entry = next(entries, None)
                    if next_entry is None:
                        break
                    entry = next_entry
                    name = hashlib.sha256(entry.sop_instance_uid.encode()).hexdigest() + ".dcm"
                    out = open(staging / name, "wb")  # noqa: SIM115
                    instance_hash = hashlib.sha256()
                    left = entry.size
            digest = stream_hash.hexdigest()
            if digest != request.stream_sha256:
                raise HubError(
                    422,
                    "Stream hash mismatch",
                    f"the stream hashes to {digest}, the manifest says {request.stream_sha256}",
                )
            manifest = {
                "registration": json.loads(_canonical(reg)),
                "commit": json.loads(_canonical(request)),
            }
            write_public(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
            os.replace(staging, final)
            fsync_dir(final.parent)
        except BaseException:
            out.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return rows

    def instance_bytes(self, upload_id: str, sop_instance_uid: str) -> bytes:
        row = self.store.instance(upload_id, sop_instance_uid)
        if row is None:
            raise HubError(404, "No such instance", f"{upload_id}/{sop_instance_uid}")
        return (self.config.data_dir / row.path).read_bytes()

    # -- files (a prepared download, node -> hub -> the hub's user) -------------------------

    def _own_file(self, node: NodeRow, file_id: str) -> FileRow:
        row = self.store.file(file_id)
        # Like uploads: another node's file is absent, not forbidden.
        if row is None or row.node_id != node.id:
            raise HubError(404, "No such file", file_id)
        return row

    def file_url(self, file_id: str, name: str) -> str:
        """Where the hub's user downloads a saved file (absolute when public_url is known)."""
        return f"{self.public_url}/files/{file_id}/{name}"

    def _file_saved(self, row: FileRow) -> FileSaved | None:
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
            saved=self._file_saved(row),
        )

    def _check_size(self, what: str, field: str, size: int, part_size: int, parts: int) -> None:
        """413 above max_stream_bytes; 422 when `parts` is not what `size` makes in parts."""
        named = f"{field} {size}"
        if size > self.config.max_stream_bytes:
            raise HubError(
                413, f"{what} too large", f"{named} exceeds {self.config.max_stream_bytes}"
            )
        expected = math.ceil(size / part_size)
        if parts != expected:
            raise HubError(
                422,
                "Inconsistent part count",
                f"{named} in parts of {part_size} makes {expected} parts, not {parts}",
            )

    def _max_file_parts(self, part_size: int) -> int:
        return math.ceil(self.config.max_stream_bytes / part_size)

    def register_file(self, node: NodeRow, reg: FileRegistration) -> tuple[FileUpload, bool]:
        """The file for a node's job: (upload, True) when newly made; 409 when the job already
        has a file with a different name, type or part size."""
        body = _canonical(reg)
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
        limit = self._max_file_parts(row.part_size)
        if not 0 <= n < limit:
            raise HubError(422, "No such part", f"parts are numbered 0..{limit - 1}")
        data, digest = receive_part(
            n, read_body, encoding, sha256_header, row.part_size, too_large_status=422
        )
        if not data:
            raise HubError(422, "Empty part", f"part {n} has no bytes")
        with self._upload_lock(file_id):
            row = self._own_file(node, file_id)
            if row.state == SAVED:
                raise HubError(409, "File saved", f"{file_id} is already saved")
            held = {p.n: p for p in self.store.file_parts(file_id)}
            if n not in held or held[n].sha256 != digest:
                part_dir = self.store.file_part_dir(file_id)
                part_dir.mkdir(mode=0o700, exist_ok=True)
                write_public(self.store.file_part_path(file_id, n), data)
                self.store.put_file_part(file_id, n, digest, len(data), self.clock.time())
            return PartAck(part=n, received_parts=len(self.store.file_parts(file_id)))

    def commit_file(self, node: NodeRow, file_id: str, request: FileCommit) -> FileSaved:
        """Assemble a file from its parts, check it and keep it; the same commit again gets
        the same answer."""
        with self._upload_lock(file_id):
            row = self._own_file(node, file_id)
            saved = self._file_saved(row)
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
            self._check_size("File", "size", request.size, row.part_size, request.parts)
            held = {p.n: p for p in self.store.file_parts(file_id)}
            if any(n not in held for n in range(request.parts)):
                raise HubError(409, "Parts missing", _missing_detail(set(held), request.parts))
            for n in range(request.parts - 1):
                if held[n].size != row.part_size:
                    raise HubError(
                        422,
                        "Wrong part size",
                        f"part {n} is {held[n].size} bytes; every part but the last must be "
                        f"part_size ({row.part_size})",
                    )
            total = sum(held[n].size for n in range(request.parts))
            if total != request.size:
                raise HubError(
                    422,
                    "Size mismatch",
                    f"the parts add up to {total} bytes, the commit says {request.size}",
                )
            path = self._assemble_file(row, request)
            now = self.clock.time()
            if not self.store.save_file(file_id, request.size, request.sha256, request.parts, now):
                raise HubError(409, "File saved", f"{file_id} changed state")
            # Parts past the last (from an earlier, longer attempt) go with the rest.
            shutil.rmtree(self.store.file_part_dir(file_id), ignore_errors=True)
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
            answer = None if stored is None else self._file_saved(stored)
            if answer is None:
                raise HubError(500, "File lost", f"{file_id} vanished while being saved")
            return answer

    def _assemble_file(self, row: FileRow, request: FileCommit) -> Path:
        """Concatenate parts 0..parts-1 into the file (streamed, fsynced); 422 when the whole
        hashes differently from the commit (the parts stay, for the node to re-send)."""
        directory = self.store.file_dir(row.file_id)
        directory.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(self.store.files_dir)
        final = directory / row.name
        staging = directory / f".{row.name}.tmp"
        digest = hashlib.sha256()
        try:
            with open(staging, "wb") as out:
                for n in range(request.parts):
                    with open(self.store.file_part_path(row.file_id, n), "rb") as part:
                        while chunk := part.read(COPY_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != request.sha256:
                raise HubError(
                    422,
                    "File hash mismatch",
                    f"the parts assemble to SHA-256 {digest.hexdigest()}, the commit says "
                    f"{request.sha256}",
                )
            os.replace(staging, final)
            fsync_dir(directory)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
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

    # -- commands ----------------------------------------------------------------------------

    def queue_command(self, node_id: str, type_: str, args: dict[str, object]) -> str:
        if self.store.node(node_id) is None:
            raise HubError(404, "No such node", node_id)
        try:
            order = schemas.CommandOrder.model_validate({"type": type_, "args": args})
            _check_command_args(order)
        except ValidationError as exc:
            raise HubError(422, "Invalid command", validation_detail(exc)) from exc
        command_id = uuid.uuid4().hex
        self.store.add_command(
            command_id, node_id, order.type, json.dumps(order.args), self.clock.time()
        )
        with self._commands:
            self._commands.notify_all()
        return command_id

    def poll_commands(self, node: NodeRow, wait: float) -> CommandBatch:
        """Commands due for `node`, waiting up to `wait` seconds (real time) for one."""
        deadline = time.monotonic() + max(0.0, min(wait, MAX_POLL_WAIT_S))
        # The fetch happens under the condition's lock, so a command queued between the
        # fetch and the wait still wakes this poll.
        with self._commands:
            while True:
                now = self.clock.time()
                rows = self.store.deliver_commands(node.id, now, now - REDELIVER_AFTER_S)
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0 or self._closing.is_set():
                    break
                self._commands.wait(remaining)
        return CommandBatch(commands=tuple(_command_model(row) for row in rows))

    def command_result(self, node: NodeRow, command_id: str, result: CommandResult) -> None:
        command = self.store.command(command_id)
        if command is None or command.node_id != node.id:
            raise HubError(404, "No such command", command_id)
        # A repeated result (a retry after a lost answer) is accepted and the first one kept.
        self.store.set_command_result(
            command_id, self.clock.time(), result.ok, json.dumps(result.result), result.error
        )

    def node_commands(self, node_id: str) -> schemas.CommandList:
        if self.store.node(node_id) is None:
            raise HubError(404, "No such node", node_id)
        return schemas.CommandList(
            commands=tuple(_command_info(row) for row in self.store.node_commands(node_id))
        )

    # -- patients, physicians and downloads --------------------------------------------------

    def download_token(self, medis_code: str) -> str:
        expires = int(self.clock.time() + DOWNLOAD_LINK_TTL_S)
        payload = f"{medis_code}.{expires}"
        mac = hmac.new(self._link_key, payload.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{payload}.{mac}"

    def _token_code(self, token: str) -> str:
        code, _, rest = token.partition(".")
        expires, _, mac = rest.partition(".")
        payload = f"{code}.{expires}"
        good = hmac.new(self._link_key, payload.encode(), hashlib.sha256).hexdigest()[:32]
        if not expires.isdigit() or not hmac.compare_digest(mac, good):
            raise HubError(404, "No such download", "the link is not valid")
        if int(expires) < self.clock.time():
            raise HubError(410, "Link expired", "open the study page again for a fresh link")
        return code

    def _patient_studies(self, uploads: list[UploadRow]) -> list[PatientStudy]:
        studies = []
        for upload in uploads:
            reg = StudyRegistration.model_validate_json(upload.registration_json)
            studies.append(
                PatientStudy(
                    upload_id=upload.upload_id,
                    medis_code=upload.medis_code,
                    study_uid=reg.study_uid,
                    revision=reg.revision,
                    study_date=reg.study_date,
                    study_description=reg.study_description,
                    modalities=reg.modalities,
                    instance_count=len(self.store.instances(upload.upload_id)),
                    patient_name=reg.patient.name,
                    referring_physician=reg.referring_physician,
                    download_token=self.download_token(upload.medis_code),
                )
            )
        return studies

    def patient_access(self, code_text: str, birth_text: str, address: str) -> list[PatientStudy]:
        """The studies under a Medis code, when the birth date matches; tries are counted."""
        code = normalise_code(code_text)
        birth = "".join(c for c in birth_text if c.isdigit())
        if not code or not birth:
            raise HubError(400, "Code and birth date needed", "enter both, as printed")
        policy = self.policy()
        now = self.clock.time()
        since = now - CODE_ATTEMPT_WINDOW_S
        limit = policy.code_max_attempts
        if (
            self.store.code_failures(code, since) >= limit
            or self.store.address_failures(address, since) >= limit
        ):
            raise HubError(
                429,
                "Too many wrong tries",
                f"after {limit} wrong tries this code (or this connection) is locked for "
                f"{int(CODE_ATTEMPT_WINDOW_S // 3600)} hours; ask your imaging center if you "
                "need help sooner",
                {"Retry-After": str(int(CODE_ATTEMPT_WINDOW_S))},
            )
        uploads = self.store.committed_by_code(code)
        # The code alone is never enough: a registration without a birth date never matches.
        matching = [
            u
            for u in uploads
            if StudyRegistration.model_validate_json(u.registration_json).patient.birth_date
            == birth
        ]
        if not matching:
            self.store.add_code_attempt(code, address, now, ok=False)
            left = max(
                0,
                limit
                - max(
                    self.store.code_failures(code, since),
                    self.store.address_failures(address, since),
                ),
            )
            raise HubError(
                403,
                "Code or birth date wrong",
                f"check the code on your slip and your birth date; {left} tries left",
            )
        self.store.add_code_attempt(code, address, now, ok=True)
        first = min(u.committed_at or u.created_at for u in matching)
        if now > first + policy.code_expiry_days * DAY_S:
            raise HubError(410, "Code expired", "ask your imaging center for the study")
        return self._patient_studies(matching)

    def physician_studies(self, physician: str) -> list[PatientStudy]:
        """The studies referred by `physician` (an account's name: only ever the signed-in
        physician's own, never a name taken from a request)."""
        key = physician_key(physician)
        if not key:
            return []
        return self._patient_studies(self.store.committed_by_physician(key))

    @contextmanager
    def guessing(self, client: str) -> Iterator[None]:
        """Around a lookup by something a client could guess (a Medis code, a download link,
        a file id): 429 while `client` has no wrong guesses left, and a 403 or 404 raised
        inside counts as one. Refused before the lookup, so a right guess is no answer."""
        wait = self.throttle.may_guess(client)
        if wait > 0:
            raise HubError(
                429,
                "Too many wrong tries",
                f"too many wrong codes or links from this connection; try again in "
                f"{max(1, round(wait / 60))} minutes",
                {"Retry-After": retry_after(wait)},
            )
        try:
            yield
        except HubError as error:
            if error.status in (403, 404):
                self.throttle.wrong_guess(client)
            raise

    def admit(self, client: str) -> None:
        """One request to a patient-facing page from `client` (429 when its bucket is empty)."""
        wait = self.throttle.request(client)
        if wait > 0:
            raise HubError(
                429,
                "Too many requests",
                "this connection is sending requests too fast; wait a moment",
                {"Retry-After": retry_after(wait)},
            )

    def study_zip(self, token: str) -> tuple[IO[bytes], str]:
        """A temporary file holding a zip of every instance under the token's code."""
        code = self._token_code(token)
        uploads = self.store.committed_by_code(code)
        if not uploads:
            raise HubError(404, "No such study", "nothing is stored under this code")
        handle = tempfile.TemporaryFile(dir=self._tmp_dir)  # noqa: SIM115 - handed to caller
        try:
            names: set[str] = set()
            # Stored: DICOM pixel data rarely shrinks, and the archive is built per request.
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
                for upload in uploads:
                    for row in self.store.instances(upload.upload_id):
                        study_uid = upload.study_uid
                        name = f"{study_uid}/{row.series_uid}/{row.sop_instance_uid}.dcm"
                        if name in names:
                            continue
                        names.add(name)
                        archive.write(self.config.data_dir / row.path, name)
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle, f"study-{format_code(code)}.zip"

    # -- webhook -----------------------------------------------------------------------------

    def record_webhook(
        self,
        vendor: str,
        progress: WebhookProgress,
        headers: dict[str, str],
        address: str,
        body: bytes,
    ) -> bool:
        """Log a progress post (`body` as received); True when its signature verified.

        A post signed by a node (X-Medix-Node, X-Medix-Timestamp, X-Medix-Signature) must
        verify with that node's webhook key within WEBHOOK_MAX_SKEW_S, else 401 and nothing is
        logged; an unsigned post is logged as unverified. While fail-next is armed the post is
        logged as a failed attempt and answered with the injected status."""
        node_id, verified = self._check_signature(headers, body)
        try:
            DownloadStatus(int(progress.Status))
        except ValueError as exc:
            raise HubError(
                422, "Unknown status", f"Status {progress.Status!r} is not a download status"
            ) from exc
        fault = self._take_webhook_fault()
        self.store.add_webhook(
            vendor,
            self.clock.time(),
            address,
            headers,
            progress.model_dump(mode="json"),
            node_id=node_id,
            verified=verified,
            answered=fault or 204,
        )
        if fault:
            raise HubError(fault, "Injected failure", "the hub was told to fail this post")
        return verified

    def _check_signature(self, headers: dict[str, str], body: bytes) -> tuple[str, bool]:
        node_id = _header(headers, NODE_HEADER)
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature:
            return node_id, False
        timestamp = _header(headers, TIMESTAMP_HEADER)
        if not node_id or not timestamp:
            raise HubError(
                401,
                "Signature incomplete",
                f"a signed post names its node ({NODE_HEADER}) and time ({TIMESTAMP_HEADER})",
            )
        node = self.store.node(node_id)
        if node is None or node.revoked or not node.webhook_key:
            raise HubError(401, "Unknown signer", f"{node_id} has no webhook key at this hub")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise HubError(401, "Bad timestamp", f"{TIMESTAMP_HEADER} is Unix seconds")
        skew = abs(self.clock.time() - int(timestamp))
        if skew > WEBHOOK_MAX_SKEW_S:
            raise HubError(
                401,
                "Stale signature",
                f"{TIMESTAMP_HEADER} is {int(skew)} s from the hub's clock "
                f"(at most {WEBHOOK_MAX_SKEW_S} s)",
            )
        expected = webhook_signature(node.webhook_key, timestamp, body)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise HubError(401, "Bad signature", f"{SIGNATURE_HEADER} does not match the body")
        return node_id, True

    def fail_webhooks(self, count: int, status: int = 503) -> schemas.WebhookFailNext:
        """Answer the next `count` webhook posts with `status` (0 cancels)."""
        armed = schemas.WebhookFailNext(count=count, status=status)
        with self._faults_lock:
            self._fail_count = armed.count
            self._fail_status = armed.status
        return armed

    def _take_webhook_fault(self) -> int:
        with self._faults_lock:
            if self._fail_count <= 0:
                return 0
            self._fail_count -= 1
            return self._fail_status

    # -- admin views -------------------------------------------------------------------------

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

    # -- system updates ------------------------------------------------------------------------

    def add_update(
        self, chunks: Iterable[bytes], *, version: str, compatible: str, limit: int
    ) -> UpdateOffer:
        """Keep an uploaded bundle; the offer a policy names it by (not published yet)."""
        try:
            offer = self.updates.add(chunks, version=version, compatible=compatible, limit=limit)
        except ValidationError as exc:
            raise HubError(400, "Bad update", validation_detail(exc)) from None
        except ValueError as exc:
            raise HubError(400, "Bad update", str(exc)) from None
        log.info(
            "update %s (%s, %d bytes) stored as %s",
            offer.version,
            offer.compatible,
            offer.size,
            offer.sha256,
        )
        return offer

    def publish_update(self, offer: UpdateOffer) -> Policy:
        """A new policy version: the current one with this update offered to every node."""
        current = self.policy()
        return self.publish_policy(
            current.model_copy(update={"version": current.version + 1, "update": offer})
        )

    def update_bundle(self, node: NodeRow, sha256: str) -> Path:
        path = self.updates.find(sha256)
        if path is None:
            raise HubError(404, "No such update", sha256)
        return path

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

    def files(self) -> schemas.FileList:
        infos = []
        for row in self.store.files():
            saved = self._file_saved(row)
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


def _check_command_args(order: schemas.CommandOrder) -> None:
    """Validate a command's args against its type (ValidationError when they do not fit)."""
    if order.type == "download":
        DownloadRequest.model_validate(order.args)
    elif order.type == "report_status":
        ReportStatusRequest.model_validate(order.args)
    elif order.type == "apply_policy":
        Policy.model_validate(order.args)
    elif order.type == "locate":
        _LocateArgs.model_validate(order.args)
    elif order.type == "diagnostics":
        _NoArgs.model_validate(order.args)


class _LocateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: int = Field(60, ge=1, le=3600)


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _command_model(row: CommandRow) -> Command:
    return Command.model_validate(
        {
            "id": row.id,
            "type": row.type,
            "args": json.loads(row.args_json),
            "issued_at": row.issued_at,
        }
    )


def _command_info(row: CommandRow) -> schemas.CommandInfo:
    return schemas.CommandInfo(
        id=row.id,
        node_id=row.node_id,
        type=row.type,
        args=json.loads(row.args_json),
        state=row.state,
        issued_at=row.issued_at,
        delivered_at=row.delivered_at,
        completed_at=row.completed_at,
        ok=row.ok,
        result=None if row.result_json is None else json.loads(row.result_json),
        error=row.error,
    )
