"""RAUC, as the box uses it: check a bundle, install it into the other slot, mark slots, reboot.

`Rauc` is the seam (what the world gives the box: the real `rauc` and `systemctl` on an
image; a fake in tests of the update flow, since CI has no A/B disk to write). `RaucCli`
runs the real commands: `rauc info` checks a bundle's signature against the keyring baked
into the image without installing anything; `rauc install` goes through RAUC's D-Bus
service (the afra user may call it: etc/dbus-1/system.d/afra-rauc.conf); `systemctl reboot`
through logind (polkit allows the afra user to reboot, nothing more).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from afra.errors import AfraError

LOG = logging.getLogger("afra.update")

KEYRING = Path("/etc/rauc/keyring.pem")
PROGRESS_RE = re.compile(r"^\s*(\d{1,3})%\s+(.*)$")

Progress = Callable[[int, str], None]


class UpdateError(AfraError):
    """An update step failed."""


class BundleRefused(UpdateError, ValueError):
    """The file is not a bundle this box may install (signature, type, compatible, version)."""


class InstallFailed(UpdateError, RuntimeError):
    """RAUC could not write the bundle into the other slot."""


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str
    description: str
    images: tuple[str, ...]


@dataclass(frozen=True)
class SlotState:
    name: str  # rootfs.0
    bootname: str  # A
    state: str  # booted, active, inactive
    boot_status: str  # good, bad
    version: str  # of the bundle installed there ("" when unknown)


@dataclass(frozen=True)
class RaucStatus:
    compatible: str
    booted: str  # bootname of the booted slot
    primary: str  # the slot the next boot starts (bootname), "" when none
    slots: tuple[SlotState, ...]

    def root(self, bootname: str) -> SlotState | None:
        for slot in self.slots:
            if slot.bootname == bootname and slot.name.startswith("rootfs."):
                return slot
        return None

    @property
    def other(self) -> str:
        names = {s.bootname for s in self.slots if s.bootname} - {self.booted}
        return next(iter(sorted(names)), "")


class Rauc(Protocol):
    def info(self, bundle: Path) -> BundleInfo: ...

    def install(self, bundle: Path, progress: Progress) -> None: ...

    def status(self) -> RaucStatus: ...

    def mark(self, verdict: str, slot: str = "booted") -> None: ...

    def reboot(self) -> None: ...


def refusal(stderr: str) -> str:
    """What a technician reads when `rauc info` refuses a file (RAUC's text is kept after it)."""
    text = " ".join(stderr.split())
    low = text.lower()
    if any(w in low for w in ("bundle format", "squashfs", "magic", "too small", "not a valid")):
        return "the file is not an AFRA update bundle; nothing was installed"
    if "signature" in low or "verify" in low or "certificate" in low or "issuer" in low:
        return (
            "the bundle is not signed with this box's update key (it may be meant for other "
            "boxes, or it was changed after signing); nothing was installed"
        )
    return f"the bundle was refused ({text[:300] or 'no reason given'}); nothing was installed"


def parse_status(doc: dict[str, object]) -> RaucStatus:
    slots: list[SlotState] = []
    entries = doc.get("slots") or []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        for name, fields in entry.items():
            if not isinstance(fields, dict):
                continue
            bundle = (fields.get("slot_status") or {}).get("bundle") or {}
            slots.append(
                SlotState(
                    name=str(name),
                    bootname=str(fields.get("bootname") or ""),
                    state=str(fields.get("state") or ""),
                    boot_status=str(fields.get("boot_status") or ""),
                    version=str(bundle.get("version") or "") if isinstance(bundle, dict) else "",
                )
            )
    booted = str(doc.get("booted") or "")
    primary_slot = str(doc.get("boot_primary") or "")
    primary = next((s.bootname for s in slots if s.name == primary_slot), "")
    return RaucStatus(
        compatible=str(doc.get("compatible") or ""),
        booted=booted,
        primary=primary,
        slots=tuple(slots),
    )


class RaucCli:
    """The real thing: `rauc` and `systemctl` as subprocesses."""

    def __init__(
        self,
        *,
        rauc: str = "rauc",
        keyring: Path | None = None,
        conf: Path | None = None,
        timeout: float = 1800.0,
    ) -> None:
        self.rauc = rauc
        self.keyring = keyring
        self.conf = conf
        self.timeout = timeout

    def _base(self) -> list[str]:
        args = [self.rauc]
        if self.conf is not None:
            args.append(f"--conf={self.conf}")
        if self.keyring is not None:
            args.append(f"--keyring={self.keyring}")
        return args

    def _run(self, args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def info(self, bundle: Path) -> BundleInfo:
        try:
            done = self._run([*self._base(), "info", "--output-format=json", str(bundle)])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError(f"rauc info could not run: {exc}") from None
        if done.returncode != 0:
            LOG.warning("rauc info refused %s: %s", bundle, done.stderr.strip()[-500:])
            raise BundleRefused(refusal(done.stderr))
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            raise BundleRefused("the bundle's manifest could not be read") from None
        images = doc.get("images") or []
        return BundleInfo(
            compatible=str(doc.get("compatible") or ""),
            version=str(doc.get("version") or ""),
            description=str(doc.get("description") or ""),
            images=tuple(
                str(name) for entry in images if isinstance(entry, dict) for name in entry
            ),
        )

    def install(self, bundle: Path, progress: Progress) -> None:
        args = [*self._base(), "install", str(bundle)]
        try:
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except OSError as exc:
            raise InstallFailed(f"rauc install could not run: {exc}") from None
        last_error = ""
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            match = PROGRESS_RE.match(line)
            if match:
                progress(min(100, int(match.group(1))), match.group(2))
            elif line.startswith("LastError:"):
                last_error = line.removeprefix("LastError:").strip()
        try:
            code = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise InstallFailed("rauc install did not finish in time") from None
        if code != 0:
            LOG.error("rauc install failed (%d): %s", code, " | ".join(tail))
            raise InstallFailed(last_error or (tail[-1] if tail else f"rauc exited with {code}"))

    def status(self) -> RaucStatus:
        try:
            done = self._run([*self._base(), "status", "--detailed", "--output-format=json"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError(f"rauc status could not run: {exc}") from None
        if done.returncode != 0:
            raise UpdateError(f"rauc status failed: {done.stderr.strip()[-300:]}")
        try:
            return parse_status(json.loads(done.stdout))
        except (ValueError, AttributeError) as exc:
            raise UpdateError(f"rauc status gave no readable answer: {exc}") from None

    def mark(self, verdict: str, slot: str = "booted") -> None:
        if verdict not in ("good", "bad", "active"):
            raise ValueError(verdict)
        try:
            done = self._run([*self._base(), "status", f"mark-{verdict}", slot])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError(f"rauc status mark-{verdict} could not run: {exc}") from None
        if done.returncode != 0:
            raise UpdateError(f"rauc status mark-{verdict} {slot} failed: {done.stderr.strip()}")
        LOG.warning("slot %s marked %s", slot, verdict)

    def reboot(self) -> None:
        try:
            done = self._run(["systemctl", "reboot"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError(f"reboot could not be asked for: {exc}") from None
        if done.returncode != 0:
            raise UpdateError(f"reboot refused: {done.stderr.strip()}")
