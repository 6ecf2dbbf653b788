"""The checks that feed the health model, and the rules they apply.

Each check (a `Probe`) runs on the monitor's thread at its own interval and raises or clears
its conditions: `StorageProbe` (free space against the floor and the warning level, a real
write), `UplinkProbe` (the hub link as the uplink last saw it, the age of the oldest
undelivered study), `PacsProbe` (C-ECHO), `IdentityProbe` (enrolment, the node certificate's
expiry). `certificate_expiry` is the certificate rule, shared with the diagnostics bundle.
`StartupFilesProbe` (the files start-up left for review) and `appliance_probes` is the list a
box runs, with the intervals from `[health]`. The checks read the rest of the box through
small views (`UplinkView`, `QueueView`, `IdentityView`) and callables.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography import x509

from afra.clock import Clock
from afra.config import Config
from afra.datadir import DataDir
from afra.health.state import Health

DAY_S = 86400.0


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
        path = DataDir(self.root).health_probe
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


class CertificateExpiry(NamedTuple):
    """When the node certificate ends, and what that means for the box at `now`."""

    not_after: datetime
    left_s: float  # seconds from `now` to not_after (negative once it has ended)
    condition: str | None  # "cert_expired", "cert_expiring", or None while it is good


def certificate_expiry(cert_path: Path, *, now: float, warning_days: int) -> CertificateExpiry:
    """The one certificate rule: expired when no time is left, expiring within `warning_days`.

    `warning_days` is `[health] cert_warning_days`. The health check raises the condition;
    the diagnostics bundle reports a certificate as good exactly when the condition is None.
    A certificate that cannot be read raises OSError or ValueError."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    not_after = cert.not_valid_after_utc
    left_s = not_after.timestamp() - now
    condition = None
    if left_s <= 0:
        condition = "cert_expired"
    elif left_s <= warning_days * DAY_S:
        condition = "cert_expiring"
    return CertificateExpiry(not_after, left_s, condition)


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
            expiry = certificate_expiry(
                self.identity.cert_path, now=self.clock.time(), warning_days=self.warning_days
            )
        except (OSError, ValueError) as exc:
            health.set("cert_expired", True, f"the node certificate cannot be read: {exc}")
            return
        health.set(
            "cert_expired",
            expiry.condition == "cert_expired",
            "the node certificate has expired: re-enrol",
        )
        health.set(
            "cert_expiring",
            expiry.condition == "cert_expiring",
            f"the node certificate expires in {expiry.left_s / DAY_S:.0f} day(s)",
        )


class StartupFiles(NamedTuple):
    """What start-up left for review (`afra.app.StartupReport`), as paths under the spool."""

    missing: Sequence[str]  # indexed, but no file on the device
    left_in_place: Sequence[tuple[str, str]]  # (path, problem): in objects/, unindexed


MISSING = "indexed, missing from the storage device: sending its study again restores it"


class StartupFilesProbe:
    """`files_need_review` while a file start-up reported is unresolved: an indexed file still
    missing (resolved when the study sent again brings it back, or its row goes), or a stored
    file still unindexed (resolved when it is indexed, by a copy sent again, or removed).
    The log names each file; the condition stays until the last one is resolved. What is
    resolved is not looked at again: once none is left, a check costs nothing."""

    name = "startup_files"

    def __init__(
        self,
        report: Callable[[], StartupFiles],
        *,
        exists: Callable[[str], bool],
        indexed_among: Callable[[Sequence[str]], set[str]],
        interval: float = 60.0,
    ) -> None:
        self.report = report
        self.exists = exists
        self.indexed_among = indexed_among
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, bool]] | None = None  # (path, problem, missing)

    def unresolved(self) -> list[dict[str, str]]:
        """The files still to review, each as {"path", "problem"} (the diagnostics bundle's)."""
        with self._lock:
            if self._pending is None:
                files = self.report()
                self._pending = [(r, MISSING, True) for r in files.missing] + [
                    (r, problem, False) for r, problem in files.left_in_place
                ]
            if self._pending:
                known = self.indexed_among([p for p, _, _ in self._pending])
                self._pending = [
                    (path, problem, missing)
                    for path, problem, missing in self._pending
                    if (path in known) is missing and self.exists(path) is not missing
                ]
            return [{"path": p, "problem": problem} for p, problem, _ in self._pending]

    def check(self, health: Health) -> None:
        health.set("files_need_review", bool(self.unresolved()))


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
    startup_files: StartupFilesProbe | None = None,
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
    if startup_files is not None:
        probes.append(startup_files)
    return probes
