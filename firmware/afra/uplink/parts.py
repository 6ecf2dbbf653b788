"""The node's one multipart part uploader: numbered parts of one upload to the hub.

Both of the node's uploads go in parts (docs/medix.md): a study revision's stream (the
uplink: register, parts, commit; uplink/stream.py reads it a part at a time) and a prepared
download's zip (node/export.py: parts sent while the zip is still growing, then commit).
What is the same for both is here: a part is read from its source only when a sender is free
(a few in flight, memory bounded by them), hashed, sent zstd-compressed when that saves at
least MIN_SAVING of its bytes, and PUT; parts the hub already holds (the registration's
`received_parts`, after a cut or a restart) are not sent again. What differs is the
caller's: where a part's bytes come from, which parts exist yet, whether a part is tried
again through an outage (a download's are; a study's delivery is retried whole, with the
uplink's backoff), a bandwidth cap, what counts as stopping, and the commit.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from afra.clock import Clock
from afra.retry import Backoff
from afra.uplink.client import HubError, HubUnavailable

# A part is sent compressed only when that saves at least this share of its bytes.
MIN_SAVING = 0.03
PARTS_IN_FLIGHT = 3

# put(number, body, sha256, encoding): one part to the hub (HubClient.put_part or
# put_file_part, bound to the upload's id).
Put = Callable[[int, bytes, str, str], object]


@dataclass(frozen=True)
class PartRetry:
    """A part tried again through a hub outage (HubUnavailable): up to `attempts` times in
    all, waiting `backoff` on `clock` between them."""

    attempts: int
    backoff: Backoff
    clock: Clock


def encode(raw: bytes, level: int) -> tuple[bytes, str, str]:
    """A part as it goes on the wire: (body, sha256 of the raw bytes, Content-Encoding)."""
    digest = hashlib.sha256(raw).hexdigest()
    packed = zstandard.ZstdCompressor(level=level).compress(raw)
    if len(packed) <= len(raw) * (1 - MIN_SAVING):
        return packed, digest, "zstd"
    return raw, digest, "identity"


class PartUploader:
    """The parts of one upload: `send` one in this thread, `submit` one to the senders,
    `send_all` a known set and wait for them."""

    def __init__(
        self,
        put: Put,
        read: Callable[[int], bytes],
        *,
        pool: ThreadPoolExecutor,
        compression_level: int,
        stop: threading.Event,
        stopped: Callable[[], Exception],
        failed: Callable[[int, HubError], Exception] | None = None,
        held: Iterable[int] = (),
        retry: PartRetry | None = None,
        throttle: Callable[[int], None] | None = None,
        sent: Callable[[], None] | None = None,
    ) -> None:
        # pool: the senders (each keeps its own kept-alive connection to the hub); the
        # caller owns it. stopped(): what a part raises once `stop` is set; failed(n, exc):
        # what it raises when the hub did not take it (without: the HubError itself).
        # throttle(n): before n bytes go out (a bandwidth cap); sent(): after each part the
        # hub took.
        self.put = put
        self.read = read
        self.pool = pool
        self.level = compression_level
        self.stop = stop
        self.stopped = stopped
        self.failed = failed
        self.held = frozenset(held)
        self.retry = retry
        self.throttle = throttle
        self.sent = sent

    def send(self, number: int) -> None:
        """Read, encode and PUT part `number` (tried again per `retry`); raises what the
        source raised, `stopped()`, or (when the hub did not take it) `failed(...)`."""
        if self.stop.is_set():
            raise self.stopped()
        body, digest, encoding = encode(self.read(number), self.level)
        try:
            self._put(number, body, digest, encoding)
        except HubError as exc:
            if self.failed is None:
                raise
            raise self.failed(number, exc) from exc
        if self.sent is not None:
            self.sent()

    def _put(self, number: int, body: bytes, digest: str, encoding: str) -> None:
        attempts = self.retry.attempts if self.retry is not None else 1
        for attempt in range(1, attempts + 1):
            if self.stop.is_set():
                raise self.stopped()
            if self.throttle is not None:
                self.throttle(len(body))
            try:
                self.put(number, body, digest, encoding)
            except HubUnavailable:
                if self.retry is None or attempt == attempts:
                    raise
                self.retry.backoff.sleep(attempt, self.retry.clock, self.stop)
                continue
            return

    def submit(self, number: int) -> Future[None] | None:
        """Part `number` to a free sender; None when the hub already holds it."""
        if number in self.held:
            return None
        return self.pool.submit(self.send, number)

    def send_all(self, numbers: Iterable[int]) -> None:
        """Send the parts among `numbers` the hub lacks, a few at a time, and wait for them;
        the first failure (in part order) is raised, and the parts not yet begun are
        dropped."""
        missing = [n for n in numbers if n not in self.held]
        for done in self.pool.map(self.send, missing):
            del done
