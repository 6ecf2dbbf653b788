"""The federation policy the hub publishes, and the system updates a policy offers.

Policies are numbered; a published version must be newer than the last (409 otherwise).
Nodes get the newest on enrolment and on a heartbeat that reports an older one. An update
bundle is kept by medix.hub.updates and offered by publishing a policy that names it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from medix.clock import Clock
from medix.hub.errors import HubError, validation_detail
from medix.hub.store import HubStore, NodeRow, StaleError
from medix.hub.updates import UpdateShelf
from medix.models import Policy, UpdateOffer

log = logging.getLogger(__name__)


class Policies:
    """The published policies (the store's) and the update bundles on offer."""

    def __init__(self, store: HubStore, updates: UpdateShelf, clock: Clock) -> None:
        self.store = store
        self.updates = updates
        self.clock = clock
        if self.store.latest_policy() is None:
            self.store.add_policy(0, Policy(version=0).model_dump_json(), self.clock.time())

    def policy(self) -> Policy:
        """The newest published policy (version 0 until one is published)."""
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
        """The bundle a node fetches by its hash (404 when the hub holds none)."""
        path = self.updates.find(sha256)
        if path is None:
            raise HubError(404, "No such update", sha256)
        return path
