"""The node's retry policy (afra.retry) and its part uploader (afra.uplink.parts), without a
network: the hub is a function that records what it is sent."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from afra.retry import Backoff, sleep_until
from afra.uplink.client import HubRefused, HubUnavailable
from afra.uplink.parts import MIN_SAVING, PartRetry, PartUploader, encode
from tests.fakes import FakeClock


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    uplink = Backoff(base=5.0, cap=900.0)

    assert [uplink.delay(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 640, 900]
    assert uplink.delay(0) == 5.0  # no failure yet counts as the first


def test_a_count_kept_for_years_never_overflows() -> None:
    """The uplink's attempts are kept in the index: after weeks of a hub outage the count is
    in the thousands, and base * 2**(n - 1) as an int would no longer convert to a float."""
    assert Backoff(base=5.0, cap=900.0).delay(5000) == 900.0
    assert Backoff(base=2.0, cap=300.0, jitter=0.5).delay(10**9) <= 300.0


def test_jitter_takes_off_at_most_its_share() -> None:
    backoff = Backoff(base=5.0, cap=900.0, jitter=0.5)

    delays = [backoff.delay(3) for _ in range(200)]

    assert all(10.0 <= d <= 20.0 for d in delays)
    assert len(set(delays)) > 1


def test_sleep_until_waits_for_the_clock_to_move(clock: FakeClock) -> None:
    stop = threading.Event()
    done = threading.Event()
    due = clock.monotonic() + 10

    def wait() -> None:
        assert not sleep_until(clock, due, stop, step=0.01)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert not done.wait(0.2)  # a clock moved by hand has not moved: still waiting
    clock.advance(10)
    assert done.wait(5)
    waiter.join()

    stop.set()
    assert sleep_until(clock, clock.monotonic() + 10, stop)


def test_a_part_is_compressed_only_when_that_pays() -> None:
    text = b"DICM" * 50_000
    body, digest, encoding = encode(text, 3)
    assert encoding == "zstd" and zstandard.ZstdDecompressor().decompress(body) == text
    assert digest == hashlib.sha256(text).hexdigest()  # of the raw bytes, as the hub checks

    noise = os.urandom(200_000)
    body, digest, encoding = encode(noise, 3)
    assert encoding == "identity" and body == noise
    assert len(zstandard.ZstdCompressor(level=3).compress(noise)) > len(noise) * (1 - MIN_SAVING)


class Hub:
    """put() as the hub sees it; fails the first `outages` tries of each part named."""

    def __init__(self, outages: dict[int, int] | None = None, refuse: int | None = None) -> None:
        self.parts: dict[int, bytes] = {}
        self.tries: dict[int, int] = {}
        self.outages = outages or {}
        self.refuse = refuse
        self._lock = threading.Lock()

    def put(self, number: int, body: bytes, sha256: str, encoding: str) -> None:
        with self._lock:
            self.tries[number] = self.tries.get(number, 0) + 1
            if self.tries[number] <= self.outages.get(number, 0):
                raise HubUnavailable("hub answered 503")
        if number == self.refuse:
            raise HubRefused("hub refused the part", 422)
        raw = zstandard.ZstdDecompressor().decompress(body) if encoding == "zstd" else body
        assert hashlib.sha256(raw).hexdigest() == sha256
        with self._lock:
            self.parts[number] = raw


class Stopped(Exception):
    pass


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(3)
    yield executor
    executor.shutdown(wait=True)


def source(number: int) -> bytes:
    return bytes([number]) * 70_000


def test_parts_the_hub_holds_are_not_read_or_sent_again(pool: ThreadPoolExecutor) -> None:
    hub = Hub()
    read: list[int] = []
    sent: list[int] = []

    def reading(number: int) -> bytes:
        read.append(number)
        return source(number)

    parts = PartUploader(
        hub.put,
        reading,
        pool=pool,
        compression_level=3,
        stop=threading.Event(),
        stopped=Stopped,
        held=(1, 3),
        sent=lambda: sent.append(1),
    )

    parts.send_all(range(5))

    assert sorted(read) == [0, 2, 4] and sorted(hub.parts) == [0, 2, 4]
    assert all(hub.parts[n] == source(n) for n in hub.parts)
    assert len(sent) == 3
    assert parts.submit(3) is None


def test_a_part_is_tried_again_through_an_outage_with_the_backoff(
    pool: ThreadPoolExecutor, clock: FakeClock
) -> None:
    hub = Hub(outages={0: 2, 1: 9})
    parts = PartUploader(
        hub.put,
        source,
        pool=pool,
        compression_level=3,
        stop=threading.Event(),
        stopped=Stopped,
        failed=lambda n, exc: RuntimeError(f"part {n}: {exc}"),
        retry=PartRetry(5, Backoff(base=2.0, cap=20.0), clock),
    )

    parts.send(0)
    assert hub.tries[0] == 3 and hub.parts[0] == source(0)
    with pytest.raises(RuntimeError, match="part 1: hub answered 503"):
        parts.send(1)
    assert hub.tries[1] == 5  # the attempts in all, then given up


def test_a_refused_part_is_not_tried_again(pool: ThreadPoolExecutor, clock: FakeClock) -> None:
    hub = Hub(refuse=2)
    parts = PartUploader(
        hub.put,
        source,
        pool=pool,
        compression_level=3,
        stop=threading.Event(),
        stopped=Stopped,
        retry=PartRetry(5, Backoff(base=2.0, cap=20.0), clock),
    )

    with pytest.raises(HubRefused):
        parts.send_all(range(4))
    assert hub.tries[2] == 1


def test_a_stop_ends_the_parts_with_the_callers_exception(pool: ThreadPoolExecutor) -> None:
    hub, stop = Hub(), threading.Event()
    throttled: list[int] = []
    parts = PartUploader(
        hub.put,
        source,
        pool=pool,
        compression_level=3,
        stop=stop,
        stopped=Stopped,
        throttle=throttled.append,
    )
    parts.send(0)
    assert throttled and throttled[0] < len(source(0))  # the bytes that go out, compressed

    stop.set()
    with pytest.raises(Stopped):
        parts.send_all(range(1, 4))
    assert sorted(hub.parts) == [0]
