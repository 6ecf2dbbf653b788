"""UpdateManager: a system update from the hub's policy or the dashboard, into the other slot.

Two ways in, one way through:

  hub       the policy names a bundle (version, size, SHA-256); the box fetches it over its
            mutual-TLS link, resuming a cut download, and checks the hash
  dashboard the technician uploads a bundle file (spooled to the data partition, never RAM)
  then      `rauc info` checks the signature against the image's keyring (a bundle signed
            with another key is refused with a clear message), the compatible string and
            the version (only newer ones); `rauc install` writes the other slot; the record
            says "rebooting" and the box restarts into it. The self-test of that boot keeps
            it or rolls it back (afra.update.selftest).

The studies on the data partition are never touched: the bundle holds the root and kernel
slots only. The front panel shows "updating" from the install to the restart.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.version import InvalidVersion, Version

from afra.audit import Audit
from afra.clock import Clock
from afra.config import UpdateSettings
from afra.errors import AfraError
from afra.health import Health
from afra.system.release import Release
from afra.update.rauc import BundleInfo, BundleRefused, InstallFailed, Rauc, UpdateError
from afra.update.status import UpdateRecord, UpdateStatus, audit_moves
from afra.uplink.client import HubClient, HubError
from afra.uplink.policy import PolicyStore
from medix.durable import replace_durably, write_stream
from medix.models import UpdateOffer

LOG = logging.getLogger("afra.update")

CHUNK = 1 << 20
QUIET_WAIT_S = 900.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


class UpdateBusy(AfraError, RuntimeError):
    """An update is already under way."""


class UploadRejected(AfraError, ValueError):
    """An uploaded file cannot be taken (too large, no room)."""


def newer(candidate: str, running: str) -> bool:
    """Whether `candidate` is a later version than `running` (PEP 440 ordering)."""
    try:
        return Version(candidate) > Version(running)
    except InvalidVersion:
        return False


class UpdateManager:
    def __init__(
        self,
        directory: Path,
        *,
        rauc: Rauc,
        release: Release,
        policy: PolicyStore,
        hub: Callable[[], HubClient | None],
        health: Health,
        clock: Clock,
        settings: UpdateSettings | None = None,
        free_bytes: Callable[[], int] | None = None,
        min_free_bytes: int = 0,
        quiet: Callable[[], bool] | None = None,
        boot_id: Callable[[], str] | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.directory = directory
        self.incoming = directory / "incoming"
        self.rauc = rauc
        self.release = release
        self.policy = policy
        self.hub = hub
        self.health = health
        self.clock = clock
        self.settings = settings or UpdateSettings()
        self.min_free_bytes = min_free_bytes
        self._free = free_bytes or (lambda: shutil.disk_usage(self.directory).free)
        self.record = UpdateRecord(directory / "status.json", clock)
        if audit is not None:
            audit_moves(self.record, audit)
        self._lock = threading.Lock()  # one attempt at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_failure: tuple[str, float] | None = None  # (sha256, monotonic)
        self._writer: threading.Thread | None = None  # an accepted upload being written
        self._said = ""  # the offer last reported as unusable (said once, not every minute)
        self.quiet = quiet or (lambda: True)
        self.boot_id = boot_id or _boot_id

    @property
    def status(self) -> UpdateStatus:
        return self.record.current

    @property
    def available(self) -> bool:
        """Updates need the AFRA image (A/B slots, RAUC); a development box has none."""
        return self.release.image

    # -- start-up --------------------------------------------------------------------------

    def recover(self) -> None:
        """An attempt cut off by a restart (power, crash) before the reboot it leads to."""
        status = self.status
        if status.state == "installing" and self._install_finished(status.slot):
            # RAUC's service finished the install after this process stopped: the new slot
            # is first in line, so its first boot will be the trial it should be.
            self.record.move(
                "rebooting",
                progress=100,
                message=f"restarting into {status.version} (slot {status.slot})",
                boot_id=self.boot_id(),
            )
            self._restart(status.version)
        elif status.state in ("downloading", "checking", "installing"):
            self.record.move("failed", message=f"interrupted by a restart while {status.state}")
        elif status.state == "rebooting" and status.boot_id and status.boot_id == self.boot_id():
            # Installed, but the restart never happened (refused, or this process was
            # restarted before it): restart now, the new slot's first boot decides.
            LOG.warning("update %s is installed but the box did not restart", status.version)
            self._restart(status.version)
        self._clean_incoming(keep_partial=True)

    def _install_finished(self, slot: str) -> bool:
        try:
            current = self.rauc.status()
        except UpdateError as exc:
            LOG.error("cannot ask RAUC how the interrupted install ended: %s", exc)
            return False
        return bool(slot) and current.primary == slot and current.booted != slot

    def _restart(self, version: str) -> None:
        try:
            self.rauc.reboot()
        except UpdateError as exc:
            LOG.error("the box could not restart into %s: %s", version, exc)

    def _clean_incoming(self, *, keep_partial: bool) -> None:
        if not self.incoming.is_dir():
            return
        for path in self.incoming.iterdir():
            if keep_partial and path.name.endswith(".part"):
                continue  # a hub download resumes from here
            path.unlink(missing_ok=True)

    # -- the hub's offer ---------------------------------------------------------------------

    def wanted(self, offer: UpdateOffer | None) -> bool:
        """Whether the policy's offer should be installed now."""
        if offer is None or not self.settings.from_hub or not self.available:
            return False
        if offer.compatible != self.release.compatible:
            self._say_once(offer, f"update {offer.version} is for {offer.compatible}, not this box")
            return False
        if not newer(offer.version, self.release.version):
            return False
        status = self.status
        if status.busy:
            return False
        if status.failed_before(offer.sha256):
            return False  # this very bundle failed here once: never again by itself
        if offer.size > self.settings.max_bundle_mb * 2**20:
            self._say_once(offer, f"update {offer.version} is larger than update.max_bundle_mb")
            return False
        failure = self._last_failure
        return not (
            failure is not None
            and failure[0] == offer.sha256
            and self.clock.monotonic() - failure[1] < self.settings.retry_after
        )

    def _say_once(self, offer: UpdateOffer, text: str) -> None:
        if self._said != offer.sha256:
            self._said = offer.sha256
            LOG.warning("%s: not installed", text)

    def poll_once(self) -> bool:
        """Install the policy's offer when it is wanted; whether an attempt was made."""
        offer = self.policy.current.update
        if not self.wanted(offer):
            return False
        assert offer is not None
        client = self.hub()
        if client is None:
            return False
        with self._lock:
            if not self.wanted(offer):
                return False
            self.record.move(
                "downloading",
                version=offer.version,
                from_version=self.release.version,
                source="hub",
                sha256=offer.sha256,
                message=f"{offer.size} bytes",
            )
            try:
                path = self._fetch(client, offer)
            except (HubError, OSError, UpdateError) as exc:
                self._last_failure = (offer.sha256, self.clock.monotonic())
                self.record.move("failed", message=f"the download failed: {exc}")
                return True
            self._install(path, expected_version=offer.version)
        return True

    def _fetch(self, client: HubClient, offer: UpdateOffer) -> Path:
        self.incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = self.incoming / f"{offer.sha256}.raucb.part"
        for stale in self.incoming.glob("*.part"):
            if stale != part:  # a download of an offer the hub has since replaced
                stale.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > offer.size:
            part.unlink()
            have = 0
        if self._free() - (offer.size - have) < self.min_free_bytes:
            raise UpdateError(
                "not enough free space for the update without going below the storage floor"
            )

        def progress(done: int) -> None:
            self._progress(int(100 * done / offer.size), f"{done} of {offer.size} bytes")

        client.download(
            f"/updates/{offer.sha256}", part, size=offer.size, progress=progress, stop=self._stop
        )
        digest = hashlib.sha256()
        with part.open("rb") as fp:
            for chunk in iter(lambda: fp.read(CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != offer.sha256:
            part.unlink()
            raise UpdateError("the downloaded bundle does not match the hub's SHA-256")
        path = part.with_suffix("")
        replace_durably(part, path)
        return path

    # -- the dashboard's upload -----------------------------------------------------------------

    def receive(self, chunks: Iterable[bytes], length: int | None) -> Path:
        """Stream an uploaded bundle to the data partition; the file's path."""
        if self.status.busy:
            raise UpdateBusy("an update is already under way")
        limit = self.settings.max_bundle_mb * 2**20
        if length is not None and length > limit:
            raise UploadRejected(f"the file is larger than {limit // 2**20} MiB")
        expected = length if length is not None else limit
        if self._free() - expected < self.min_free_bytes:
            raise UploadRejected("there is not enough free space for the file")
        self.incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.incoming / f"upload-{secrets.token_hex(8)}.raucb"
        size, _sha256 = write_stream(
            path,
            chunks,
            limit=limit,
            too_large=lambda: UploadRejected(f"the file is larger than {limit // 2**20} MiB"),
        )
        if size == 0:
            path.unlink()
            raise UploadRejected("the file is empty")
        return path

    def accept_upload(self, path: Path) -> UpdateStatus:
        """Check an uploaded bundle now (signature, compatible string, version), so the
        technician hears at once when it is refused; a bundle that may be installed is
        written on a thread of its own (then the box restarts). The status after the check."""
        if not self._lock.acquire(blocking=False):
            path.unlink(missing_ok=True)
            raise UpdateBusy("an update is already under way")
        try:
            self.record.move(
                "checking", from_version=self.release.version, source="dashboard", sha256=""
            )
            info = self._checked(path, expected_version=None)
        except BaseException:
            self._lock.release()
            raise
        if info is None:
            self._lock.release()
            return self.status
        self._writer = threading.Thread(
            target=self._write_then_release, args=(path, info), name="update-install", daemon=True
        )
        self._writer.start()
        return self.status

    def _write_then_release(self, path: Path, info: BundleInfo) -> None:
        try:
            self._write(path, info)
        except Exception:
            LOG.exception("installing the uploaded bundle failed")
        finally:
            self._lock.release()

    # -- one way through ----------------------------------------------------------------------

    def _install(self, path: Path, *, expected_version: str | None) -> UpdateStatus:
        info = self._checked(path, expected_version=expected_version)
        return self.status if info is None else self._write(path, info)

    def _checked(self, path: Path, *, expected_version: str | None) -> BundleInfo | None:
        """The bundle's manifest when it may be installed; None (and the record says why)."""
        if self.status.state == "downloading":
            self.record.move("checking")
        try:
            info = self.rauc.info(path)
            self._check(info.compatible, info.version, expected_version)
        except BundleRefused as exc:
            path.unlink(missing_ok=True)
            LOG.error("update refused: %s", exc)
            self.record.move("refused", message=str(exc))
            return None
        except UpdateError as exc:
            path.unlink(missing_ok=True)
            self.record.move("failed", message=str(exc))
            return None
        return info

    def _write(self, path: Path, info: BundleInfo) -> UpdateStatus:
        """Install a checked bundle into the other slot and restart into it."""
        try:
            other = self.rauc.status().other
        except UpdateError as exc:
            path.unlink(missing_ok=True)
            return self.record.move("failed", message=str(exc))
        self.record.move("installing", version=info.version, slot=other, message=info.description)
        self.health.set("updating", True, f"installing {info.version}: do not unplug")
        try:
            self.rauc.install(path, lambda p, m: self._progress(p, m))
        except (InstallFailed, UpdateError) as exc:
            self.health.set("updating", False)
            self._last_failure = (self.status.sha256, self.clock.monotonic())
            return self.record.move("failed", message=f"installing failed: {exc}")
        finally:
            path.unlink(missing_ok=True)
        # Recorded before the wait: from here a power cut or a crash boots the new slot, and
        # its first boot must be its trial.
        self.record.move(
            "rebooting",
            progress=100,
            message=f"restarting into {info.version} (slot {other})",
            boot_id=self.boot_id(),
        )
        self._wait_quiet()
        self._restart(info.version)
        return self.status

    def _wait_quiet(self) -> None:
        """Restart between studies: wait (up to QUIET_WAIT_S) until no association is open."""
        deadline = self.clock.monotonic() + QUIET_WAIT_S
        while not self.quiet() and self.clock.monotonic() < deadline:
            self._progress(100, "installed; restarting once the studies arriving now are in")
            if self.clock.sleep(5.0, self._stop):
                return

    def _progress(self, progress: int, message: str) -> None:
        self.record.note_progress(progress, message)

    def _check(self, compatible: str, version: str, expected: str | None) -> None:
        if compatible != self.release.compatible:
            raise BundleRefused(
                f"the bundle is for {compatible or 'an unknown system'}, this box is "
                f"{self.release.compatible or 'not an AFRA image'}; nothing was installed"
            )
        if expected is not None and version != expected:
            raise BundleRefused(
                f"the bundle holds version {version}, the hub announced {expected}; "
                "nothing was installed"
            )
        if not newer(version, self.release.version):
            raise BundleRefused(
                f"this box runs {self.release.version} and the bundle holds {version}: only a "
                "newer version is installed"
            )

    # -- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        if not self.available:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="update", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                LOG.exception("update check failed")
            if self.clock.sleep(self.settings.check_interval, self._stop):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
