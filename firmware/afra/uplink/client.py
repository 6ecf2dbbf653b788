"""The node's Medix client: HTTPS with mutual TLS, the hub verified against the pinned CA only.

Errors are sorted by what the caller should do: `HubUnavailable` (network, timeouts, 5xx:
try again later), `HubUntrusted` (the hub's certificate is not from the enrolled CA: someone
else may be answering; try again later, loudly), `HubRefused` (4xx: the request itself is
wrong; the problem's detail says why).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from afra import __version__
from afra.errors import AfraError
from afra.uplink.identity import NodeIdentity
from medix.models import (
    API_PREFIX,
    AuditAck,
    AuditBatch,
    AuditEvent,
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
    Receipt,
    Registration,
    StudyRegistration,
)

LOG = logging.getLogger("afra.uplink")

M = TypeVar("M", bound=BaseModel)

DOWNLOAD_CHUNK = 1 << 20


class HubError(AfraError):
    """The hub could not be used for a request."""


class HubUnavailable(HubError, ConnectionError):
    """Network trouble, a timeout, or the hub's own failure (5xx): try again later."""


class HubUntrusted(HubUnavailable):
    """The hub's TLS certificate does not chain to the CA given at enrolment."""


class HubRefused(HubError, ValueError):
    """The hub refused the request (4xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _problem(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:500]
    return str(body)[:500]


def _session(verify: Path, cert: tuple[str, str] | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy variables, no system CA bundle: only the pinned CA
    session.verify = str(verify)
    if cert is not None:
        session.cert = cert
    session.headers["User-Agent"] = f"AFRA/{__version__}"
    return session


def _send(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        response = session.request(method, url, allow_redirects=False, **kwargs)
    except requests.exceptions.SSLError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            raise HubUntrusted(
                f"the hub at {url.split('/medix/')[0]} did not present a certificate from "
                "the enrolled CA"
            ) from None
        raise HubUnavailable(f"TLS with the hub failed: {exc}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise HubUnavailable(f"hub unreachable: {exc.__class__.__name__}") from None
    except requests.RequestException as exc:  # a cut mid-body, a bad encoding, ...
        raise HubUnavailable(f"hub exchange failed: {exc.__class__.__name__}") from None
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise HubUnavailable(f"hub answered {response.status_code}: {_problem(response)}")
    if response.status_code >= 400:
        raise HubRefused(
            f"hub refused {method} {url.split(API_PREFIX)[-1]} with {response.status_code}: "
            f"{_problem(response)}",
            response.status_code,
        )
    if 300 <= response.status_code < 400:
        raise HubRefused(f"hub answered with a redirect ({response.status_code})", 502)
    return response


def _parse(model: type[M], response: requests.Response) -> M:
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise HubUnavailable(f"hub sent an answer that is not a {model.__name__}: {exc}") from None


def enrol(
    identity: NodeIdentity,
    *,
    hub_url: str,
    pairing_code: str,
    ca_file: Path,
    node_name: str,
    timeout: float = 30.0,
) -> str:
    """Enrol with a one-time pairing code; returns the node id the hub gave."""
    hub_url = hub_url.rstrip("/")
    if not hub_url.startswith("https://"):
        raise HubRefused("the hub URL must start with https://", 400)
    identity.ensure_key()
    request = EnrolRequest(
        pairing_code=pairing_code.strip(),
        node_name=node_name,
        csr_pem=identity.csr_pem(node_name),
        software_version=__version__,
    )
    with _session(ca_file, None) as session:
        response = _send(
            session,
            "POST",
            f"{hub_url}{API_PREFIX}/enrol",
            json=request.model_dump(mode="json"),
            timeout=timeout,
        )
    answer = _parse(EnrolResponse, response)
    identity.save_enrolment(
        node_id=answer.node_id,
        hub_url=hub_url,
        cert_pem=answer.certificate_pem,
        ca_pem=answer.ca_pem,
        webhook_key=answer.webhook_key,
        node_api_token=answer.node_api_token,
    )
    LOG.info("enrolled with the hub at %s as node %s", hub_url, answer.node_id)
    return answer.node_id


class HubClient:
    """Every call the node makes to its hub after enrolment."""

    def __init__(self, identity: NodeIdentity, *, timeout: float = 30.0) -> None:
        self.identity = identity
        self.base = identity.hub_url + API_PREFIX
        self.timeout = timeout
        # One session (one kept-alive connection) per thread: parts go up in parallel. Each
        # download job and its part senders are threads of their own, so the sessions of
        # threads that have ended are closed whenever a new one is made: a box that runs
        # for months keeps only its live threads' connections.
        self._local = threading.local()
        self._sessions: dict[threading.Thread, requests.Session] = {}
        self._sessions_lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = _session(
                self.identity.ca_path,
                (str(self.identity.cert_path), str(self.identity.key_path)),
            )
            self._local.session = session
            with self._sessions_lock:
                for thread in [t for t in self._sessions if not t.is_alive()]:
                    self._sessions.pop(thread).close()
                self._sessions[threading.current_thread()] = session
        return session

    @property
    def open_sessions(self) -> int:
        """Sessions held (one per thread that has called the hub and not yet been swept)."""
        with self._sessions_lock:
            return len(self._sessions)

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def _json(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        model: type[M],
        *,
        exclude_none: bool = False,
    ) -> M:
        response = _send(
            self._session,
            method,
            self.base + path,
            json=None if body is None else body.model_dump(mode="json", exclude_none=exclude_none),
            timeout=self.timeout,
        )
        return _parse(model, response)

    def heartbeat(self, beat: Heartbeat) -> HeartbeatResponse:
        # Without an update to report the field is left out: a hub from before system updates
        # (its models refuse unknown fields) still takes the heartbeat.
        return self._json("POST", "/heartbeat", beat, HeartbeatResponse, exclude_none=True)

    def register(self, registration: StudyRegistration) -> Registration:
        return self._json("POST", "/studies", registration, Registration)

    def upload_status(self, upload_id: str) -> Registration:
        return self._json("GET", f"/uploads/{upload_id}", None, Registration)

    def put_part(
        self, upload_id: str, number: int, body: bytes, *, sha256: str, encoding: str
    ) -> PartAck:
        return self._put_part(f"/uploads/{upload_id}/parts/{number}", body, sha256, encoding)

    def _put_part(self, path: str, body: bytes, sha256: str, encoding: str) -> PartAck:
        response = _send(
            self._session,
            "PUT",
            self.base + path,
            data=body,
            headers={
                "Content-Encoding": encoding,
                "Content-Type": "application/octet-stream",
                "X-Medix-Part-SHA256": sha256,
            },
            timeout=self.timeout,
        )
        return _parse(PartAck, response)

    def commit(self, upload_id: str, request: CommitRequest) -> Receipt:
        return self._json("POST", f"/uploads/{upload_id}/commit", request, Receipt)

    # -- files (a prepared download) --------------------------------------------------------

    def register_file(self, registration: FileRegistration) -> FileUpload:
        return self._json("POST", "/files", registration, FileUpload)

    def file_status(self, file_id: str) -> FileUpload:
        return self._json("GET", f"/files/{file_id}", None, FileUpload)

    def put_file_part(
        self, file_id: str, number: int, body: bytes, *, sha256: str, encoding: str
    ) -> PartAck:
        return self._put_part(f"/files/{file_id}/parts/{number}", body, sha256, encoding)

    def commit_file(self, file_id: str, request: FileCommit) -> FileSaved:
        return self._json("POST", f"/files/{file_id}/commit", request, FileSaved)

    def download(
        self,
        path: str,
        dest: Path,
        *,
        size: int,
        progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """GET `path` into `dest`, appending to what an earlier, cut-off try left there
        (an HTTP byte range). At most `size` bytes are taken."""
        have = dest.stat().st_size if dest.exists() else 0
        if have >= size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = _send(
            self._session,
            "GET",
            self.base + path,
            headers=headers,
            stream=True,
            timeout=self.timeout,
        )
        try:
            if have and response.status_code != 206:
                have = 0  # the hub sent the whole file again: start over
            mode = "ab" if have else "wb"
            with dest.open(mode) as fp:
                try:
                    for chunk in response.iter_content(DOWNLOAD_CHUNK):
                        if stop is not None and stop.is_set():
                            raise HubUnavailable("the download was stopped")
                        if have + len(chunk) > size:
                            raise HubRefused("the hub sent more bytes than it announced", 502)
                        fp.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(have)
                except requests.RequestException as exc:
                    broke = exc.__class__.__name__
                    raise HubUnavailable(f"the download broke off: {broke}") from None
                finally:
                    fp.flush()
                    os.fsync(fp.fileno())
        finally:
            response.close()
        if have != size:
            raise HubUnavailable(f"the download ended at {have} of {size} bytes")

    def post_audit(self, events: Sequence[AuditEvent]) -> int:
        """Hand audit records to the hub; the last sequence number it holds."""
        ack = self._json("POST", "/audit", AuditBatch(events=tuple(events)), AuditAck)
        return ack.through

    def commands(self, wait: int) -> CommandBatch:
        response = _send(
            self._session,
            "GET",
            f"{self.base}/commands",
            params={"wait": wait},
            timeout=self.timeout + wait,
        )
        return _parse(CommandBatch, response)

    def post_result(self, command_id: str, result: CommandResult) -> None:
        _send(
            self._session,
            "POST",
            f"{self.base}/commands/{command_id}/result",
            json=result.model_dump(mode="json"),
            timeout=self.timeout,
        )
