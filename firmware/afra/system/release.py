"""The system the box runs: its image version, the A/B slot it booted, what it is built for.

On an AFRA image `/usr/lib/os-release` carries IMAGE_ID=afra and IMAGE_VERSION (the image
build writes both) and `/etc/afra-release` the RAUC compatible string; the kernel command
line names the slot U-Boot chose (`rauc.slot=A`). Elsewhere (a development machine, CI)
the version is the afra package's and there is no slot.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from afra import __version__

OS_RELEASE = Path("/etc/os-release")
AFRA_RELEASE = Path("/etc/afra-release")
CMDLINE = Path("/proc/cmdline")


@dataclass(frozen=True)
class Release:
    version: str
    image: bool  # running from an AFRA image (not a development checkout)
    compatible: str  # RAUC's compatible string of the image ("" outside one)
    slot: str | None  # "A" or "B" when booted by the AFRA boot script


def _os_release(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            try:
                parts = shlex.split(value)
            except ValueError:
                continue
            fields[key.strip()] = parts[0] if parts else ""
    return fields


def booted_slot(cmdline: Path = CMDLINE) -> str | None:
    """The slot named by `rauc.slot=` on the kernel command line, if any."""
    try:
        words = cmdline.read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return None
    for word in words:
        if word.startswith("rauc.slot="):
            return word.split("=", 1)[1] or None
    return None


def running_release(
    *, os_release: Path = OS_RELEASE, afra_release: Path = AFRA_RELEASE, cmdline: Path = CMDLINE
) -> Release:
    fields = _os_release(os_release)
    if fields.get("IMAGE_ID") != "afra" or not fields.get("IMAGE_VERSION"):
        return Release(version=__version__, image=False, compatible="", slot=None)
    compatible = ""
    try:
        words = afra_release.read_text(encoding="utf-8").split()
        compatible = words[3] if len(words) >= 4 else ""
    except OSError:
        pass
    return Release(
        version=fields["IMAGE_VERSION"],
        image=True,
        compatible=compatible,
        slot=booted_slot(cmdline),
    )
