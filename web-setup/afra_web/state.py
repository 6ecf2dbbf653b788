"""What the web app keeps on disk, under `<data_dir>/web/`, and nothing else.

    setup-code.hash   the label's setup code, hashed (written when the image is made)
    admin.hash        the admin password, hashed
    secret.key        the key that signs session cookies
    progress.json     the wizard's progress, with a schema version (a reboot resumes)
    lockout.json      guesses of the setup code or password, per client (a reboot does not reset)
    sessions.json     the signed-in sessions (their ids hashed): signing out ends one here
    audit.sqlite      the audit log (audit.py)

Secrets are hashed with scrypt from the standard library: memory-hard, so a stolen card is
slow to attack on GPUs, and no compiled dependency to build for the Pi (argon2 would be the
choice if a dependency were free). Every file is written whole (temp, fsync, rename), mode 0600.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from afra import datadir
from afra.clock import Clock
from afra.datadir import DataDir
from afra.medis.codes import parse_code
from medix import durable
from medix.passwords import hash_secret, verify_secret

LOG = logging.getLogger("afra.web")

SCHEMA_VERSION = 1
# The wizard's steps after the claim, in order. "hub" may be skipped and done later.
STEPS = ("password", "network", "dicom", "hub", "summary")
SETUP_CODE_FILE = datadir.SETUP_CODE_HASH
ADMIN_FILE = datadir.ADMIN_HASH
SESSION_MAX_S = 12 * 3600.0  # a session ends this long after its sign-in, used or not

# scrypt cost: 16 MiB and about 0.05 s on a laptop, 0.2-0.3 s on a Raspberry Pi 4.


class ThrottledError:
    """An ERROR about one trouble at most once every `every_s` (a full disk fails every write,
    and a log that floods is a log no one reads); times from the injected clock."""

    def __init__(self, clock: Clock, every_s: float = 60.0) -> None:
        self.clock = clock
        self.every_s = every_s
        self._at: float | None = None

    def __call__(self, message: str, *args: object) -> None:
        now = self.clock.monotonic()
        if self._at is None or now - self._at >= self.every_s:
            self._at = now
            LOG.error(message, *args)

    def reset(self) -> None:
        """The trouble is over: the next one is logged at once."""
        self._at = None


def web_dir(data_dir: Path) -> Path:
    return DataDir(data_dir).web


def write_private(path: Path, data: bytes) -> None:
    """Write a whole file durably with mode 0600, in a folder only the box's user reads."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    durable.write_private(path, data)


@dataclass
class Progress:
    """The wizard's progress; `epoch` changes when the password does (old sessions end)."""

    schema: int = SCHEMA_VERSION
    claimed_at: float | None = None
    steps_done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    finished_at: float | None = None
    wizard_open: bool = True
    epoch: int = 0

    @property
    def next_step(self) -> str:
        for step in STEPS:
            if step not in self.steps_done:
                return step
        return "summary"


class Guess(NamedTuple):
    right: bool
    checked: bool  # False: refused unchecked, the client must wait
    wait: float  # seconds until this client's next guess is heard


class _Tries(NamedTuple):
    failures: int
    locked_until: float  # wall clock (it outlives a reboot)
    last: float  # wall clock of the last counted guess


def client_key(address: str) -> str:
    """Whose guesses these are: one IPv4 address, or one IPv6 /64.

    A host given an IPv6 /64 may use any of its 2^64 addresses (privacy addresses), so a
    per-address count would bound nothing there; an IPv4-mapped address counts as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Lockout:
    """Guesses of the setup code and the password, counted per client: a few free tries,
    then waits that double to a cap.

    Fair means: one client's wrong guesses never lock out another. A client is a remote
    address (an IPv6 /64, see `client_key`), so a phone on the LAN cannot lock the technician
    out. A client that is locked stays locked even for the right secret (otherwise the lock
    would not bound its guessing), and the right secret ends that client's run of wrong ones.
    Whoever shares an address or /64 with a guesser shares its lock; the button's setup window
    signs in without any guess and is the way in for them.

    A guess is counted *before* its (slow, scrypt) check, under one lock with the check of
    the wait, so parallel guesses from one client get at most FREE_TRIES checks before the
    wait, and one per expired wait after it. The counts are persisted (wall-clock times), so a
    reboot or pulling the plug gives no fresh tries; if the disk cannot be written the counts
    held in memory still apply.

    Bounded: a client is kept from its first guess until it gives the right secret, or until
    it has been quiet for FORGET_S with no wait left. At most MAX_CLIENTS are kept; once that
    many have guessed, every further client shares one count (OVERFLOW) rather than pushing
    one out, since forgetting a client would hand it fresh tries. Only an attack from hundreds
    of addresses fills the table (a right secret removes its client), and then the newcomers,
    not the clients already known, share the lock.
    """

    FREE_TRIES = 5
    BASE_S = 60.0
    CAP_S = 3600.0
    MAX_CLIENTS = 256
    FORGET_S = 24 * 3600.0
    OVERFLOW = "*"
    SCHEMA = 2  # 1 was one count for every client together

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._clients = self._load()
        self._error = ThrottledError(clock)

    def _load(self) -> dict[str, _Tries]:
        now = self.clock.time()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            rows = data["clients"] if data.get("schema") == self.SCHEMA else {}
            clients = {
                str(key): _Tries(
                    int(failures),
                    # A clock that was far ahead once does not lock anyone out for longer.
                    min(float(until), now + self.CAP_S),
                    min(float(last), now),
                )
                for key, (failures, until, last) in rows.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # unreadable or from schema 1: counting starts again
        newest = sorted(clients.items(), key=lambda kv: kv[1].last)[-self.MAX_CLIENTS - 1 :]
        return self._forget(dict(newest), now)

    def _forget(self, clients: dict[str, _Tries], now: float) -> dict[str, _Tries]:
        return {
            key: tries
            for key, tries in clients.items()
            if tries.locked_until > now or now - tries.last < self.FORGET_S
        }

    def _key(self, address: str) -> str:
        key = client_key(address)
        if key in self._clients:
            return key
        known = len(self._clients) - (self.OVERFLOW in self._clients)
        return key if known < self.MAX_CLIENTS else self.OVERFLOW

    def _save(self) -> None:
        try:
            if not self._clients:
                self.path.unlink(missing_ok=True)
                return
            rows = {key: list(tries) for key, tries in self._clients.items()}
            write_private(self.path, json.dumps({"schema": self.SCHEMA, "clients": rows}).encode())
        except OSError as exc:
            self._error(
                "cannot save the sign-in lockout in %s (%s): held in memory", self.path, exc
            )
        else:
            self._error.reset()

    def _wait(self, failures: int) -> float:
        if failures < self.FREE_TRIES:
            return 0.0
        return min(self.CAP_S, self.BASE_S * 2 ** min(failures - self.FREE_TRIES, 32))

    def remaining(self, address: str) -> float:
        """Seconds until the next guess from `address` is heard (0: now)."""
        with self._lock:
            tries = self._clients.get(self._key(address))
        return 0.0 if tries is None else max(0.0, tries.locked_until - self.clock.time())

    def attempt(self, address: str) -> float:
        """Count a guess from `address` before it is checked: 0 when it may be checked now,
        else the seconds to wait (and the guess is not counted, nor to be checked)."""
        with self._lock:
            now = self.clock.time()
            self._clients = self._forget(self._clients, now)
            key = self._key(address)
            tries = self._clients.get(key)
            if tries is not None and tries.locked_until > now:
                return tries.locked_until - now
            failures = (tries.failures if tries is not None else 0) + 1
            wait = self._wait(failures)
            self._clients[key] = _Tries(failures, now + wait if wait else 0.0, now)
            self._save()
        return 0.0

    def guess(self, address: str, check: Callable[[], bool]) -> Guess:
        """Count, then check, one guess from `address` (check runs outside the lock)."""
        wait = self.attempt(address)
        if wait:
            return Guess(right=False, checked=False, wait=wait)
        if check():
            self.success(address)
            return Guess(right=True, checked=True, wait=0.0)
        return Guess(right=False, checked=True, wait=self.remaining(address))

    def success(self, address: str) -> None:
        """The right secret from `address`: its run of wrong guesses ends (a shared
        OVERFLOW count stays: it is the many's, not this client's)."""
        with self._lock:
            key = client_key(address)
            if self._clients.pop(key, None) is not None:
                self._save()


class Sessions:
    """The sessions the server knows are signed in: a cookie opens the pages only while its
    session id is listed here, so signing out, a password change and a factory reset end the
    session on the box and a copied cookie no longer opens anything.

    `sessions.json` maps the SHA-256 of each id (a stolen card lists no usable ids) to when it
    signed in; at most MAX sessions (the oldest is signed out first) and none older than
    SESSION_MAX_S. Read through a cache keyed by the file's inode, time and size, so a file
    removed or rewritten under the app (a factory reset, another instance) wins at once. On a
    disk that cannot be written, the change is held in memory (a technician can still sign in
    to see why the box fails) and written with the next one that can be.
    """

    MAX = 32

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._table: dict[str, float] = {}
        self._error = ThrottledError(clock)

    @staticmethod
    def _key(sid: str) -> str:
        return hashlib.sha256(sid.encode("utf-8")).hexdigest()

    def _current(self) -> dict[str, float]:
        try:
            st = os.stat(self.path)
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        except OSError:
            return self._table  # cannot look: what this process knows
        if seen != self._seen:
            self._seen = seen
            self._table = self._read() if seen is not None else {}
        return self._table

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {str(k): float(v) for k, v in data["sessions"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # unreadable: everyone signs in again

    def _write(self, table: dict[str, float]) -> None:
        now = self.clock.time()
        fresh = sorted((at, key) for key, at in table.items() if now - at <= SESSION_MAX_S)
        self._table = {key: at for at, key in fresh[-self.MAX :]}
        try:
            write_private(self.path, json.dumps({"sessions": self._table}).encode())
            st = os.stat(self.path)
            self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as exc:
            self._error(
                "cannot save the signed-in sessions in %s (%s): held in memory", self.path, exc
            )
        else:
            self._error.reset()

    def start(self) -> str:
        """A new session: its id, for the cookie."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._write({**self._current(), self._key(sid): self.clock.time()})
        return sid

    def alive(self, sid: str) -> bool:
        if not sid:
            return False
        with self._lock:
            at = self._current().get(self._key(sid))
        return at is not None and self.clock.time() - at <= SESSION_MAX_S

    def end(self, sid: str) -> None:
        with self._lock:
            table = dict(self._current())
            if table.pop(self._key(sid), None) is not None:
                self._write(table)

    def end_all(self) -> None:
        with self._lock:
            if self._current():
                self._write({})


class WebState:
    def __init__(self, data_dir: Path, clock: Clock) -> None:
        self.data_dir = data_dir
        self.directory = web_dir(data_dir)
        self.clock = clock
        self.lockout = Lockout(self.directory / "lockout.json", clock)
        self.sessions = Sessions(self.directory / "sessions.json", clock)
        self._progress_path = self.directory / "progress.json"
        self._admin_path = self.directory / ADMIN_FILE
        self._code_path = self.directory / SETUP_CODE_FILE

    # -- secrets ---------------------------------------------------------------------------

    def secret_key(self) -> bytes:
        path = self.directory / "secret.key"
        try:
            key = path.read_bytes()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        write_private(path, key)
        return key

    @property
    def has_setup_code(self) -> bool:
        return self._code_path.exists()

    def check_setup_code(self, code: str) -> bool:
        """InvalidCodeError when the text is not a well-formed code (a typo, not a guess)."""
        canonical = parse_code(code)
        try:
            stored = self._code_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return False
        return verify_secret(canonical, stored)

    @property
    def has_password(self) -> bool:
        return self._admin_path.exists()

    def set_password(self, password: str) -> None:
        """Every session ends with the old password (the caller signs its own in again)."""
        write_private(self._admin_path, (hash_secret(password) + "\n").encode("ascii"))
        progress = self.progress()
        progress.epoch += 1
        self.save(progress)
        self.sessions.end_all()

    def check_password(self, password: str) -> bool:
        try:
            stored = self._admin_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return False
        return verify_secret(password, stored)

    # -- progress --------------------------------------------------------------------------

    def progress(self) -> Progress:
        try:
            data = json.loads(self._progress_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Progress()
        except (OSError, ValueError):
            return Progress()  # unreadable: start the wizard again rather than lock people out
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            return Progress()  # no older schema exists yet; later versions migrate here
        known = {k: v for k, v in data.items() if k in Progress.__dataclass_fields__}
        try:
            return Progress(**known)
        except TypeError:
            return Progress()

    def save(self, progress: Progress) -> None:
        write_private(self._progress_path, json.dumps(asdict(progress), indent=2).encode())

    def mark_claimed(self) -> Progress:
        progress = self.progress()
        if progress.claimed_at is None:
            progress.claimed_at = self.clock.time()
            self.save(progress)
        return progress

    def step_done(self, step: str, *, skipped: bool = False) -> Progress:
        progress = self.progress()
        if step not in progress.steps_done:
            progress.steps_done.append(step)
        if skipped and step not in progress.skipped:
            progress.skipped.append(step)
        if not skipped and step in progress.skipped:
            progress.skipped.remove(step)
        self.save(progress)
        return progress

    def finish(self) -> Progress:
        progress = self.progress()
        if "summary" not in progress.steps_done:
            progress.steps_done.append("summary")
        progress.finished_at = self.clock.time()
        progress.wizard_open = False
        self.save(progress)
        return progress

    def reopen(self) -> Progress:
        progress = self.progress()
        progress.wizard_open = True
        self.save(progress)
        return progress

    @property
    def setup_finished(self) -> bool:
        return self.progress().finished_at is not None
