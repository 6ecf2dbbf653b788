"""Real RAUC bundles for the update tests: tiny slot images, signed with the box's key (a test
CA made by image-build/devkeys.sh) or with another."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPATIBLE = "afra-rpi4-arm64"


def _bundle(work: Path, name: str, version: str, keys: Path, compatible: str = COMPATIBLE) -> Path:
    src = work / f"src-{name}"
    src.mkdir()
    (src / "root.img").write_bytes(os.urandom(192 * 1024))
    (src / "kernel.img").write_bytes(os.urandom(64 * 1024))
    (src / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat=verity\n\n"
        "[image.rootfs]\nfilename=root.img\n\n[image.kernel]\nfilename=kernel.img\n"
    )
    conf = work / f"sign-{name}.conf"
    conf.write_text(
        f"[system]\ncompatible={compatible}\nbootloader=noop\n"
        f"[keyring]\npath={keys / 'ca.pem'}\ncheck-purpose=codesign\n"
    )
    out = work / f"{name}.raucb"
    subprocess.run(
        ["rauc", f"--conf={conf}", "bundle", f"--cert={keys / 'signing.pem'}",
         f"--key={keys / 'signing.key'}", str(src), str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def make_bundles(work: Path) -> dict[str, Path]:
    """The bundles the update tests use, and the `rauc` configuration a box would read."""
    ours, theirs = work / "keys", work / "other-keys"
    for keys, org in ((ours, "AFRA test"), (theirs, "Somebody else")):
        subprocess.run([str(REPO / "image-build/devkeys.sh"), str(keys), org], check=True)
    conf = work / "box.conf"  # what /etc/rauc/system.conf gives `rauc info` on a box
    conf.write_text(
        f"[system]\ncompatible={COMPATIBLE}\nbootloader=noop\n"
        f"[keyring]\npath={ours / 'ca.pem'}\ncheck-purpose=codesign\n"
    )
    garbage = work / "garbage.raucb"
    garbage.write_bytes(b"this is a photo of the box, not an update\n" * 100)
    return {
        "conf": conf,
        "good": _bundle(work, "good", "1.1.0", ours),
        "older": _bundle(work, "older", "0.9.0", ours),
        "pi5": _bundle(work, "pi5", "1.1.0", ours, compatible="afra-rpi5-arm64"),
        "foreign": _bundle(work, "foreign", "1.2.0", theirs),
        "garbage": garbage,
    }
