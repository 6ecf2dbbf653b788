"""The webhook log: download progress nodes post for PACS vendors (`/webhook/v1/pacs/<vendor>`),
their signature checks, and fault injection for tests (fail-next).

A post signed by a node (X-Medix-Node, X-Medix-Timestamp, X-Medix-Signature) must verify
with that node's webhook key within WEBHOOK_MAX_SKEW_S of the hub's clock, else 401 and
nothing is logged; an unsigned post is logged as unverified. While fail-next is armed a post
is logged as a failed attempt and answered with the injected status.
"""

from __future__ import annotations

import hmac
import re
import threading

from medix.clock import Clock
from medix.hub import schemas
from medix.hub.errors import HubError
from medix.hub.store import HubStore
from medix.models import (
    NODE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DownloadStatus,
    WebhookProgress,
    webhook_signature,
)

# A signed webhook post is accepted this far from the hub's clock, either way: enough for
# clock skew and retries in flight, short enough that a captured post soon goes stale.
WEBHOOK_MAX_SKEW_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _header(headers: dict[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value.strip()
    return ""


class WebhookLog:
    """Progress posts as the hub received them (the store's), and the armed faults."""

    def __init__(self, store: HubStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        # Fault injection (admin fail-next): how many posts still fail, and how.
        self._faults_lock = threading.Lock()
        self._fail_count = 0
        self._fail_status = 503

    def record_webhook(
        self,
        vendor: str,
        progress: WebhookProgress,
        headers: dict[str, str],
        address: str,
        body: bytes,
    ) -> bool:
        """Log a progress post (`body` as received); True when its signature verified."""
        node_id, verified = self._check_signature(headers, body)
        try:
            DownloadStatus(int(progress.Status))
        except ValueError as exc:
            raise HubError(
                422, "Unknown status", f"Status {progress.Status!r} is not a download status"
            ) from exc
        fault = self._take_fault()
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

    def _take_fault(self) -> int:
        with self._faults_lock:
            if self._fail_count <= 0:
                return 0
            self._fail_count -= 1
            return self._fail_status
