"""What the box has seen of each calling AE title: its last C-ECHO and its stores.

The setup wizard shows a technician the moment the PACS's echo or first store arrives, so the
PACS admin and the technician know the two ends agree. Kept in memory only (a restart
forgets it): it answers "is it working now", the index keeps what was stored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from afra.clock import Clock

MAX_PEERS = 64  # a LAN may hold many senders; a flood of made-up AE titles must not grow this


@dataclass(frozen=True)
class Sighting:
    ae_title: str
    address: str
    last_echo_at: float | None = None
    first_store_at: float | None = None
    last_store_at: float | None = None
    stores: int = 0


class PeerSightings:
    """Thread-safe: association threads record, the web app reads."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, Sighting] = {}

    def _update(self, ae_title: str, address: str, echo: bool, count: int = 1) -> None:
        now = self.clock.time()
        with self._lock:
            old = self._seen.pop(ae_title, None)
            if old is None:
                if len(self._seen) >= MAX_PEERS:
                    self._seen.pop(next(iter(self._seen)))  # forget the least recent
                old = Sighting(ae_title=ae_title, address=address)
            if echo:
                new = replace(old, address=address, last_echo_at=now)
            else:
                new = replace(
                    old,
                    address=address,
                    first_store_at=old.first_store_at or now,
                    last_store_at=now,
                    stores=old.stores + count,
                )
            self._seen[ae_title] = new

    def echo(self, ae_title: str, address: str) -> None:
        self._update(ae_title, address, echo=True)

    def store(self, ae_title: str, address: str) -> None:
        self._update(ae_title, address, echo=False)

    def stores(self, ae_title: str, address: str, count: int) -> None:
        """`count` stores a receiving worker saw lately (afra.dicom.workers), as of now."""
        if count > 0:
            self._update(ae_title, address, echo=False, count=count)

    def get(self, ae_title: str) -> Sighting | None:
        with self._lock:
            return self._seen.get(ae_title)

    def all(self) -> list[Sighting]:
        with self._lock:
            return list(reversed(self._seen.values()))
