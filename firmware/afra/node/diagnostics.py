"""The diagnostics bundle: what a hub operator or IT person needs to see why a box struggles.

C-ECHO of the PACS, DNS and TLS to the hub (against the pinned CA, with the hub's own
clock for the skew), disk, the node certificate's expiry, the queue, the policy version and
the recent log. Each check is timed and never raises: a failing check is a result. The log
excerpt comes from a ring buffer of the last lines at INFO and above; the box's log names
studies by UID and peers by AE title, never patients.

The bundle is collected from `Sources`: the few parts of the box it reads, as they are at
the moment it is asked for (the composition root builds one each time). The certificate is
judged by the health model's rule (`afra.health.certificate_expiry`), so the bundle and the
`cert_expiring` condition agree on what "expiring soon" means.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509

from afra import __version__
from afra.clock import Clock
from afra.health import DAY_S, IdentityView, QueueView, certificate_expiry, disk_usage
from afra.uplink.client import HubError
from medix.models import Heartbeat, HeartbeatResponse

RING_LINES = 200


class LogRing(logging.Handler):
    """Keeps the last log lines in memory for the bundle."""

    def __init__(self, size: int = RING_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self._ring_lock = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break logging
            return
        with self._ring_lock:
            self.lines.append(line[:1000])

    def recent(self) -> list[str]:
        with self._ring_lock:
            return list(self.lines)


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        result = check()
        result.setdefault("ok", True)
    except Exception as exc:
        result = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
    result["ms"] = round((time.monotonic() - start) * 1000, 1)
    return result


class NodeIdentityView(IdentityView, Protocol):
    """What the bundle reads of the node's identity (afra.uplink.identity.NodeIdentity)."""

    @property
    def node_id(self) -> str: ...

    @property
    def hub_url(self) -> str: ...

    @property
    def ca_path(self) -> Path: ...


class HeartbeatView(Protocol):
    """The hub, as far as the clock check needs it (afra.uplink.client.HubClient)."""

    def heartbeat(self, beat: Heartbeat) -> HeartbeatResponse: ...


@dataclass(frozen=True)
class Sources:
    """The parts of the box the bundle is collected from, as they are now."""

    box_name: str
    clock: Clock
    identity: NodeIdentityView
    policy_version: int
    # The PACS's C-ECHO and its label ("AE@host:port"), or None when none is configured.
    pacs: tuple[Callable[[], int], str] | None
    hub: HeartbeatView | None  # None until the box is enrolled
    heartbeat: Callable[[], Heartbeat]  # the message the box would send the hub now
    data_dir: Path
    min_free_bytes: int  # the storage floor (storage.min_free_mb)
    cert_warning_days: int  # [health] cert_warning_days
    queue: QueueView
    # The files start-up left for review and not yet resolved, as {"path", "problem"};
    # None where that is not known (a bundle made outside the running box).
    files_to_review: Callable[[], list[dict[str, str]]] | None = None


def collect(box: Sources, ring: LogRing | None = None) -> dict[str, Any]:
    """The bundle as JSON-ready data."""
    bundle: dict[str, Any] = {
        "software_version": __version__,
        "box_name": box.box_name,
        "generated_at": datetime.fromtimestamp(box.clock.time(), UTC).isoformat(),
        "policy_version": box.policy_version,
    }
    identity = box.identity
    enrolled = identity.enrolled
    bundle["node_id"] = identity.node_id if enrolled else None

    def pacs() -> dict[str, Any]:
        if box.pacs is None:
            return {"ok": False, "error": "no PACS configured"}
        echo, peer = box.pacs
        status = echo()
        return {"ok": status == 0, "status": f"0x{status:04X}", "peer": peer}

    def hub_dns() -> dict[str, Any]:
        host = urlsplit(identity.hub_url).hostname or ""
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return {"host": host, "addresses": sorted({str(i[4][0]) for i in infos})}

    def hub_tls() -> dict[str, Any]:
        parts = urlsplit(identity.hub_url)
        host, port = parts.hostname or "", parts.port or 443
        context = ssl.create_default_context(cafile=str(identity.ca_path))
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
        cert = x509.load_der_x509_certificate(der or b"")
        return {
            "protocol": version,
            "verified_against": "the CA pinned at enrolment",
            "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }

    def clock() -> dict[str, Any]:
        if box.hub is None:
            return {"ok": False, "error": "not enrolled"}
        before = box.clock.time()
        try:
            answer = box.hub.heartbeat(box.heartbeat())
        except HubError as exc:
            return {"ok": False, "error": str(exc)}
        after = box.clock.time()
        skew = answer.hub_time - (before + after) / 2
        return {"ok": abs(skew) < 60, "skew_s": round(skew, 3)}

    def certificate() -> dict[str, Any]:
        expiry = certificate_expiry(
            identity.cert_path, now=box.clock.time(), warning_days=box.cert_warning_days
        )
        return {
            "ok": expiry.condition is None,  # neither expired nor expiring soon
            "not_after": expiry.not_after.isoformat(),
            "days_left": round(expiry.left_s / DAY_S, 1),
        }

    def disk() -> dict[str, Any]:
        usage = disk_usage(box.data_dir)
        floor = box.min_free_bytes
        return {
            "ok": usage.free > floor,
            "total_mb": usage.total // 2**20,
            "free_mb": usage.free // 2**20,
            "floor_mb": floor // 2**20,
        }

    def queue() -> dict[str, Any]:
        count, oldest, size = box.queue.queue_stats(box.clock.time())
        return {"studies_waiting": count, "oldest_waiting_s": round(oldest), "bytes": size}

    bundle["pacs_echo"] = _timed(pacs)
    if enrolled:
        bundle["hub_dns"] = _timed(hub_dns)
        bundle["hub_tls"] = _timed(hub_tls)
        bundle["clock"] = _timed(clock)
        bundle["certificate"] = _timed(certificate)
    else:
        bundle["hub"] = {"ok": False, "error": "not enrolled with a hub"}
    bundle["disk"] = _timed(disk)
    bundle["queue"] = _timed(queue)
    if box.files_to_review is None:
        bundle["files_to_review"] = {"ok": False, "error": "known to the running box only"}
    else:
        try:
            bundle["files_to_review"] = box.files_to_review()
        except Exception as exc:  # the index may be what failed: the bundle still comes
            bundle["files_to_review"] = {"ok": False, "error": str(exc)}
    bundle["recent_log"] = ring.recent() if ring is not None else []
    return bundle
