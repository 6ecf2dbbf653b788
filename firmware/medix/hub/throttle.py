"""Rate limits per client address: token buckets kept in memory, bounded, on the hub's clock.

Every page a patient or physician reaches (the patient page, downloads, saved files, the
inbox and the sign-in) takes a token from the address's `requests` bucket. A wrong guess (a
wrong Medis code or birth date, a wrong password, a download link or file id that does not
exist) also takes one from its `guesses` bucket, which is small and refills slowly, and a
wrong password one from the `accounts` bucket of the login it was tried on, so guessing from
many addresses is slowed too. An empty bucket is 429 with Retry-After.

Why our own and not Flask-Limiter: its storage (the `limits` package) reads the system clock
and expires keys on a timer thread, so tests could not move time by hand, and its per-route
decorators do not express "a wrong code costs from another bucket". This is one small class.

Memory is bounded: each bucket set holds at most `max_keys` buckets and forgets the one used
longest ago (a forgotten bucket is as good as full, so the bound costs at most that one key's
history). IPv6 clients are keyed by their /64, since one subscriber gets a whole /64.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from medix.clock import Clock

DEFAULT_MAX_KEYS = 10_000
IPV6_PREFIX = 64


@dataclass(frozen=True)
class Rate:
    """A bucket of `burst` tokens that refills at `per_s` tokens a second."""

    burst: float
    per_s: float

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_s <= 0:
            raise ValueError("a rate needs a burst of at least 1 and a positive refill")


@dataclass(frozen=True)
class RateLimits:
    """The hub's limits; the defaults let a person browse and make guessing hopeless."""

    # Any patient-facing request: 60 at once, then one a second.
    requests: Rate = Rate(burst=60, per_s=1.0)
    # Wrong guesses from one address: 10, then one every 6 minutes (at most 250 a day).
    guesses: Rate = Rate(burst=10, per_s=1 / 360)
    # Wrong passwords on one login, from anywhere: 10, then one every 15 minutes.
    accounts: Rate = Rate(burst=10, per_s=1 / 900)
    max_keys: int = DEFAULT_MAX_KEYS


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class TokenBuckets:
    """Buckets of one `rate`, one per key; thread-safe."""

    rate: Rate
    clock: Clock
    max_keys: int = DEFAULT_MAX_KEYS
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _refilled(self, key: str) -> _Bucket:
        now = self.clock.time()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.rate.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # max(): a wall clock stepped back must not drain (or fill) anyone's bucket.
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(self.rate.burst, bucket.tokens + elapsed * self.rate.per_s)
            bucket.at = max(bucket.at, now)
        return bucket

    def _wait(self, bucket: _Bucket, cost: float) -> float:
        return max(0.0, (cost - bucket.tokens) / self.rate.per_s)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when they were there, else the seconds until they will be
        (and nothing is taken)."""
        with self._lock:
            bucket = self._refilled(key)
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return 0.0
            return self._wait(bucket, cost)

    def wait(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0.0: now), taking nothing."""
        with self._lock:
            return self._wait(self._refilled(key), cost)

    def charge(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens whatever is left: a wrong guess is paid for even when guesses
        raced past `wait` together. The debt is capped at one burst."""
        with self._lock:
            bucket = self._refilled(key)
            bucket.tokens = max(-self.rate.burst, bucket.tokens - cost)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


def client_key(address: str | None) -> str:
    """The key a client's requests are counted under: its IPv4 address, or its IPv6 /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class Throttle:
    """The hub's three bucket sets (RateLimits); a refusal is the wait in seconds."""

    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self.limits = limits
        self.requests = TokenBuckets(limits.requests, clock, limits.max_keys)
        self.guesses = TokenBuckets(limits.guesses, clock, limits.max_keys)
        self.accounts = TokenBuckets(limits.accounts, clock, limits.max_keys)

    def request(self, client: str) -> float:
        return self.requests.take(client)

    def may_guess(self, client: str) -> float:
        return self.guesses.wait(client)

    def wrong_guess(self, client: str) -> None:
        self.guesses.charge(client)

    def may_try_account(self, login: str) -> float:
        return self.accounts.wait(login)

    def wrong_password(self, client: str, login: str) -> None:
        self.guesses.charge(client)
        self.accounts.charge(login)
