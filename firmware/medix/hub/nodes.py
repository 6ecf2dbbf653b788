"""Nodes at the hub: pairing codes, enrolment (a certificate signed from the node's CSR, its
webhook key and API token), who a client certificate names, revocation, heartbeats and the
audit records nodes hand over.

A pairing code is kept as its hash and used once; wrong codes are counted per address
(PAIRING_FAILURE_LIMIT in PAIRING_FAILURE_WINDOW_S, then 429). A node is known afterwards by
its certificate's fingerprint only.
"""

from __future__ import annotations

import base64
import logging
import secrets

from medix.clock import Clock
from medix.hub import schemas
from medix.hub.ca import CSRError, HubCA, fingerprint
from medix.hub.codes import format_code, hash_code, normalise_code
from medix.hub.errors import HubError
from medix.hub.policy import Policies
from medix.hub.store import HubStore, NodeRow
from medix.models import (
    AuditAck,
    AuditBatch,
    EnrolRequest,
    EnrolResponse,
    Heartbeat,
    HeartbeatResponse,
)

log = logging.getLogger(__name__)

PAIRING_FAILURE_LIMIT = 5
PAIRING_FAILURE_WINDOW_S = 600.0
PAIRING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PAIRING_LENGTH = 12
WEBHOOK_KEY_BYTES = 32
API_TOKEN_BYTES = 32


class NodeRegistry:
    """Enrolment and the enrolled nodes' identity, heartbeats and audit records."""

    def __init__(
        self,
        store: HubStore,
        ca: HubCA,
        policies: Policies,
        clock: Clock,
        *,
        pairing_code_ttl_s: float,
    ) -> None:
        self.store = store
        self.ca = ca
        self.policies = policies
        self.clock = clock
        self.pairing_code_ttl_s = pairing_code_ttl_s

    def new_pairing_code(self) -> schemas.PairingCode:
        code = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_LENGTH))
        now = self.clock.time()
        expires_at = now + self.pairing_code_ttl_s
        self.store.add_pairing_code(hash_code(code), now, expires_at)
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
        code_hash = hash_code(normalise_code(request.pairing_code))
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
            policy=self.policies.policy(),
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

    def heartbeat(self, node: NodeRow, beat: Heartbeat) -> HeartbeatResponse:
        """Record a node's health and queue; the newer policy, if there is one."""
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
        policy = self.policies.policy()
        return HeartbeatResponse(
            hub_time=now,
            policy=policy if policy.version > beat.policy_version else None,
            commands_waiting=self.store.waiting_commands(node.id),
        )
