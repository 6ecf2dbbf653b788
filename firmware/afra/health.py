"""The appliance's health: one state machine written as data, and the checks that feed it.

Parts of the box raise and clear *conditions* ("hub_unreachable", "disk_floor", ...). Each
condition names the *state* it puts the box in; the box's state is the highest-ranked state
among the active conditions ("healthy" when none is active), and every active condition stays
listed as a reason. Nothing else decides the state: the LEDs, `afra status`, the dashboard and
the hub heartbeat all read it from here.

    health.set("hub_unreachable", True, "connection refused")
    health.state     -> "degraded"
    health.reasons   -> [Reason(condition="hub_unreachable", state="degraded", ...)]

A condition can be held by several sources at once (the wizard and the enrolment check both
speak for "unclaimed"); it is active while any source holds it. A condition can also be set
for a limited time (`for_seconds`): the setup window and locate end by themselves.

`HealthMonitor` runs the checks (storage, uplink, PACS C-ECHO, certificate, enrolment) on its
own thread at their own intervals, driven by the injected clock, and keeps a status file
(`<data_dir>/status.json`) that `afra status` reads from another process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cryptography import x509

from afra.clock import Clock
from afra.config import Config
from afra.errors import AfraError
from medix.durable import write_atomic

LOG = logging.getLogger("afra.health")


# -- the model, as data ----------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    name: str
    rank: int  # several active conditions: the highest rank wins
    summary: str


@dataclass(frozen=True)
class Condition:
    name: str
    state: str
    text: str  # what a technician reads when no detail is given


HEALTHY = "healthy"

STATES: dict[str, State] = {
    s.name: s
    for s in (
        State(HEALTHY, 0, "working normally"),
        State("degraded", 10, "working, but something needs attention"),
        State("unclaimed", 20, "waiting for setup"),
        State("setup_open", 30, "setup window open"),
        State("booting", 40, "starting"),
        State("failed", 50, "not working: needs a technician"),
        State("updating", 60, "installing an update: do not unplug"),
        State("locating", 70, "showing the locate pattern"),
    )
}

CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("booting", "booting", "the appliance is starting"),
        Condition("unclaimed", "unclaimed", "not enrolled with a Medix hub yet"),
        Condition("setup_open", "setup_open", "the setup window is open"),
        Condition("updating", "updating", "an update is being installed"),
        Condition("locating", "locating", "someone asked the box to show where it is"),
        Condition("hub_unreachable", "degraded", "the hub cannot be reached"),
        Condition("queue_stale", "degraded", "the oldest undelivered study is too old"),
        Condition("disk_warning", "degraded", "the storage device is nearly full"),
        Condition("pacs_unreachable", "degraded", "the PACS does not answer C-ECHO"),
        Condition("cert_expiring", "degraded", "the node certificate expires soon"),
        Condition("disk_floor", "failed", "free space is below the floor: new studies refused"),
        Condition("storage_unwritable", "failed", "the storage device cannot be written"),
        Condition("cert_expired", "failed", "the node certificate has expired"),
    )
}

assert all(c.state in STATES for c in CONDITIONS.values())


class UnknownCondition(AfraError, ValueError):
    """A condition name the health model does not define."""


class Reason(NamedTuple):
    condition: str
    state: str
    detail: str
    source: str
    since: float  # wall-clock time the condition became active


@dataclass
class _Held:
    detail: str
    since_wall: float
    until: float | None  # monotonic deadline, or None
    seq: int  # raised in this order (ties of rank and time keep it)


Listener = Callable[["Health"], None]


class Health:
    """The box's health: conditions in, one state and its reasons out. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}
        self._listeners: list[Listener] = []
        self._state = HEALTHY
        self._changed_at = clock.time()
        self._seq = 0

    # -- events in --------------------------------------------------------------------------

    def set(
        self,
        condition: str,
        active: bool,
        detail: str = "",
        *,
        source: str = "",
        for_seconds: float | None = None,
    ) -> None:
        """Raise or clear a condition (for one source); unknown names raise UnknownCondition."""
        if condition not in CONDITIONS:
            raise UnknownCondition(f"unknown health condition {condition!r}")
        key = (condition, source)
        now = self.clock.monotonic()
        until = None if for_seconds is None else now + for_seconds
        with self._lock:
            self._expire(now)
            held = self._held.get(key)
            if active:
                text = detail or CONDITIONS[condition].text
                if held is not None and held.detail == text and held.until is until is None:
                    return
                if held is None:
                    self._seq += 1
                    held = _Held(text, self.clock.time(), until, self._seq)
                self._held[key] = _Held(text, held.since_wall, until, held.seq)
            else:
                if held is None:
                    return
                del self._held[key]
            self._resolve()
        self._notify(True)

    def refresh(self) -> None:
        """End conditions whose time ran out (also done on every read)."""
        with self._lock:
            fire = self._expire(self.clock.monotonic())
            if fire:
                self._resolve()
        self._notify(fire)

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback(health)` after every change of state or reasons; returns unsubscribe."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return unsubscribe

    # -- state out --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        self.refresh()
        with self._lock:
            return self._state

    @property
    def reasons(self) -> list[Reason]:
        """Active conditions, worst first (then oldest first)."""
        self.refresh()
        with self._lock:
            return self._reasons()

    def is_active(self, condition: str) -> bool:
        self.refresh()
        with self._lock:
            return any(c == condition for c, _ in self._held)

    def remaining(self, condition: str) -> float:
        """Seconds until a timed condition ends (0 when not active or not timed)."""
        now = self.clock.monotonic()
        with self._lock:
            ends = [h.until for (c, _), h in self._held.items() if c == condition and h.until]
        return max(0.0, max(ends) - now) if ends else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The state, its summary and the reasons, as JSON-ready data."""
        self.refresh()
        with self._lock:
            state = self._state
            changed_at = self._changed_at
            reasons = self._reasons()
        return {
            "state": state,
            "summary": STATES[state].summary,
            "since": changed_at,
            "reasons": [
                {
                    "condition": r.condition,
                    "state": r.state,
                    "detail": r.detail,
                    "source": r.source,
                    "since": r.since,
                }
                for r in reasons
            ],
        }

    # -- inside the lock ----------------------------------------------------------------------

    def _expire(self, now: float) -> bool:
        gone = [k for k, h in self._held.items() if h.until is not None and h.until <= now]
        for key in gone:
            del self._held[key]
        return bool(gone)

    def _reasons(self) -> list[Reason]:
        held = sorted(
            self._held.items(),
            key=lambda kv: (-STATES[CONDITIONS[kv[0][0]].state].rank, kv[1].since_wall, kv[1].seq),
        )
        return [Reason(c, CONDITIONS[c].state, h.detail, s, h.since_wall) for (c, s), h in held]

    def _resolve(self) -> None:
        """Recompute the state from the active conditions."""
        worst = max(
            (STATES[CONDITIONS[c].state] for c, _ in self._held),
            key=lambda s: s.rank,
            default=STATES[HEALTHY],
        )
        if worst.name != self._state:
            LOG.log(
                logging.WARNING if worst.rank >= STATES["failed"].rank else logging.INFO,
                "health: %s -> %s (%s)",
                self._state,
                worst.name,
                "; ".join(r.detail for r in self._reasons()) or worst.summary,
            )
            self._state = worst.name
            self._changed_at = self.clock.time()

    def _notify(self, fire: bool) -> None:
        if not fire:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self)
            except Exception:
                LOG.exception("health listener failed")


# -- the checks that feed it -------------------------------------------------------------------


class Probe(Protocol):
    """One check: run every `interval` seconds on the monitor thread; sets conditions."""

    name: str
    interval: float

    def check(self, health: Health) -> None: ...


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def disk_usage(path: Path) -> DiskUsage:
    return DiskUsage(*shutil.disk_usage(path))


class StorageProbe:
    """Free space against the floor and the warning level; a real write to the data folder."""

    name = "storage"

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int,
        warning_percent: int,
        interval: float = 30.0,
        usage: Callable[[Path], DiskUsage] | None = None,
        room_check: Callable[[int], None] | None = None,
    ) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.warning_percent = warning_percent
        self.interval = interval
        self.usage = usage or disk_usage
        # The receiver's refusals end here when room comes back and nobody is sending.
        self.room_check = room_check

    def check(self, health: Health) -> None:
        try:
            self._write_probe()
        except OSError as exc:
            health.set("storage_unwritable", True, f"cannot write in {self.root}: {exc}")
            return
        health.set("storage_unwritable", False)
        usage = self.usage(self.root)
        free_mb, floor_mb = usage.free // 2**20, self.min_free_bytes // 2**20
        below_floor = usage.free < self.min_free_bytes
        health.set(
            "disk_floor",
            below_floor,
            f"{free_mb} MB free, the floor is {floor_mb} MB: new studies are refused",
        )
        if self.room_check is not None:
            self.room_check(usage.free)
        used_percent = 100.0 * usage.used / usage.total if usage.total else 0.0
        health.set(
            "disk_warning",
            not below_floor and used_percent >= self.warning_percent,
            f"storage {used_percent:.0f}% full (warning at {self.warning_percent}%), "
            f"{free_mb} MB free",
        )

    def _write_probe(self) -> None:
        path = self.root / ".health-probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok\n")
        finally:
            os.close(fd)
        path.unlink()


class UplinkView(Protocol):
    """What the uplink check reads from the uplink worker."""

    @property
    def hub_reachable(self) -> bool | None: ...


class QueueView(Protocol):
    def queue_stats(self, now: float) -> tuple[int, float, int]: ...


class UplinkProbe:
    """The hub link (as the uplink last saw it) and the age of the oldest undelivered study."""

    name = "uplink"

    def __init__(
        self,
        uplink: UplinkView,
        index: QueueView,
        *,
        stale_after_s: Callable[[], float],
        clock: Clock,
        interval: float = 5.0,
    ) -> None:
        self.uplink = uplink
        self.index = index
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.interval = interval

    def check(self, health: Health) -> None:
        health.set(
            "hub_unreachable",
            self.uplink.hub_reachable is False,
            "the hub cannot be reached (the box keeps receiving; uploads will resume)",
        )
        count, oldest_s, _ = self.index.queue_stats(self.clock.time())
        limit = self.stale_after_s()
        health.set(
            "queue_stale",
            count > 0 and oldest_s > limit,
            f"{count} stud(ies) waiting, the oldest for {oldest_s / 3600:.1f} h "
            f"(policy: {limit / 3600:.0f} h)",
        )


class PacsProbe:
    """C-ECHO the PACS; a refusal, an error status or silence is `pacs_unreachable`.

    `target` gives the PACS as it is now (the wizard can set or change it while the box runs):
    its C-ECHO and a label, or None when no PACS is configured."""

    name = "pacs"

    def __init__(
        self, target: Callable[[], tuple[Callable[[], int], str] | None], *, interval: float
    ) -> None:
        self.target = target
        self.interval = interval
        self.label = ""

    def check(self, health: Health) -> None:
        found = self.target()
        if found is None:
            health.set("pacs_unreachable", False)
            return
        echo, self.label = found
        try:
            status = echo()
        except Exception as exc:  # any failure to talk to the PACS is the same symptom
            health.set("pacs_unreachable", True, f"PACS {self.label} does not answer: {exc}")
            return
        health.set(
            "pacs_unreachable",
            status != 0,
            f"PACS {self.label} answered C-ECHO with status 0x{status:04X}",
        )


class IdentityView(Protocol):
    @property
    def enrolled(self) -> bool: ...

    @property
    def cert_path(self) -> Path: ...


class IdentityProbe:
    """Enrolment (unclaimed until enrolled) and the node certificate's expiry."""

    name = "identity"

    def __init__(
        self,
        identity: IdentityView,
        *,
        clock: Clock,
        warning_days: int,
        interval: float = 60.0,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.warning_days = warning_days
        self.interval = interval

    def check(self, health: Health) -> None:
        enrolled = self.identity.enrolled
        health.set("unclaimed", not enrolled, "not enrolled with a Medix hub", source="identity")
        if not enrolled:
            health.set("cert_expired", False)
            health.set("cert_expiring", False)
            return
        try:
            cert = x509.load_pem_x509_certificate(self.identity.cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            health.set("cert_expired", True, f"the node certificate cannot be read: {exc}")
            return
        ends = cert.not_valid_after_utc.timestamp()
        left_s = ends - self.clock.time()
        health.set("cert_expired", left_s <= 0, "the node certificate has expired: re-enrol")
        health.set(
            "cert_expiring",
            0 < left_s <= self.warning_days * 86400,
            f"the node certificate expires in {left_s / 86400:.0f} day(s)",
        )


# -- the monitor thread and the status file ------------------------------------------------------

STATUS_FILE = "status.json"
STATUS_REFRESH_S = 30.0  # the file is rewritten at least this often while the box runs


class StatusPart(Protocol):
    """Another part of the box that shows up in the status file (the panel, mDNS)."""

    def snapshot(self) -> dict[str, Any]: ...

    def signature(self) -> str:
        """Changes when the part's snapshot changes in a way `afra status` should show."""
        ...


class HealthMonitor:
    """Runs each probe when due (injected clock); keeps the status file for `afra status`."""

    def __init__(
        self,
        health: Health,
        probes: Sequence[Probe],
        *,
        clock: Clock,
        status_path: Path | None = None,
        parts: Mapping[str, StatusPart] | None = None,
        tick: float = 1.0,
    ) -> None:
        self.health = health
        self.probes = list(probes)
        self.clock = clock
        self.status_path = status_path
        self.parts = dict(parts or {})
        self.tick = tick
        self._due: dict[str, float] = {}
        self._pass_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: tuple[str, float] | None = None

    def run_once(self) -> int:
        """Run the probes that are due, then refresh the status file; how many ran."""
        with self._pass_lock:  # one pass at a time: the thread's, or a caller's
            now = self.clock.monotonic()
            ran = 0
            for probe in self.probes:
                if now < self._due.get(probe.name, now):
                    continue
                self._due[probe.name] = now + probe.interval
                try:
                    probe.check(self.health)
                except Exception:
                    LOG.exception("health check %s failed", probe.name)
                ran += 1
            self.health.refresh()
            self.write_status()
            return ran

    def write_status(self, force: bool = False) -> bool:
        """Rewrite the status file when something visible changed or it is getting old."""
        if self.status_path is None:
            return False
        health = self.health.snapshot()
        signature = json.dumps(
            [health, {name: part.signature() for name, part in self.parts.items()}],
            sort_keys=True,
        )
        now = self.clock.monotonic()
        if not force and self._written is not None:
            last, at = self._written
            if last == signature and now - at < STATUS_REFRESH_S:
                return False
        doc: dict[str, Any] = {
            "health": health,
            **{name: part.snapshot() for name, part in self.parts.items()},
            "updated_at": self.clock.time(),
            "pid": os.getpid(),
        }
        try:
            # Rewritten every few seconds and worthless after a reboot: atomic, not fsynced.
            write_atomic(self.status_path, json.dumps(doc, indent=2).encode(), sync=False)
        except OSError as exc:
            LOG.debug("status file %s not written: %s", self.status_path, exc)
            return False
        self._written = (signature, now)
        return True

    @property
    def alive(self) -> bool:
        """Whether its thread runs (systemd's watchdog is fed only while it does)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self.status_path is not None:
            self.status_path.unlink(missing_ok=True)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.run_once()
                if first:  # every check has run once: the box knows how it is
                    self.health.set("booting", False)
                    self.write_status(force=True)
                    first = False
            except Exception:
                LOG.exception("health pass failed")
            if self.clock.sleep(self.tick, self._stop):
                return


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running box's last status document, or None when there is none."""
    try:
        data = json.loads((data_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def box_running(status: Mapping[str, Any], now: float) -> bool:
    """Whether the process that wrote `status` still runs and keeps it fresh."""
    pid = status.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
    updated = status.get("updated_at")
    return isinstance(updated, int | float) and now - updated < 3 * STATUS_REFRESH_S


def appliance_probes(
    config: Config,
    *,
    root: Path,
    identity: IdentityView,
    uplink: UplinkView,
    index: QueueView,
    stale_after_s: Callable[[], float],
    pacs: Callable[[], tuple[Callable[[], int], str] | None],
    clock: Clock,
    usage: Callable[[Path], DiskUsage] = disk_usage,
    room_check: Callable[[int], None] | None = None,
) -> list[Probe]:
    """The checks a box runs, with their intervals from `[health]`."""
    h = config.health
    probes: list[Probe] = [
        StorageProbe(
            root,
            min_free_bytes=config.storage.min_free_mb * 2**20,
            warning_percent=h.disk_warning_percent,
            interval=h.check_interval,
            usage=usage,
            room_check=room_check,
        ),
        UplinkProbe(
            uplink, index, stale_after_s=stale_after_s, clock=clock, interval=h.check_interval
        ),
        IdentityProbe(
            identity, clock=clock, warning_days=h.cert_warning_days, interval=h.check_interval
        ),
    ]
    probes.append(PacsProbe(pacs, interval=h.pacs_echo_interval))
    return probes
