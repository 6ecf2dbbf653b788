"""An AFRA image booted under qemu: `qemu-system-aarch64 -M virt` through Debian's
u-boot-qemu (TCG: no KVM for an arm64 guest here), its serial console in a file, TCP ports of
the guest forwarded to free ports on the host's loopback. The same disk boots again and
again: a reboot inside the guest is a reboot of the machine (the watchdog's too)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU = "qemu-system-aarch64"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_disk(image: Path, disk: Path, size_gib: int) -> None:
    """A sparse copy of `image`, grown to `size_gib` (a card bigger than the image)."""
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    with disk.open("r+b") as fp:
        fp.truncate(size_gib * 2**30)


class Machine:
    def __init__(
        self,
        disk: Path,
        console: Path,
        *,
        forwards: dict[int, int],
        memory: str = "1G",
        cpus: int = 2,
        watchdog: bool = True,
    ) -> None:
        if shutil.which(QEMU) is None or not UBOOT.exists():
            raise RuntimeError("qemu-system-arm and u-boot-qemu are needed (apt-get install)")
        self.disk = disk
        self.console = console
        self.forwards = forwards
        self.memory = memory
        self.cpus = cpus
        self.watchdog = watchdog
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def command(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.forwards.items()
        )
        cmd = [
            QEMU, "-M", "virt", "-cpu", "cortex-a72", "-smp", str(self.cpus), "-m", self.memory,
            "-bios", str(UBOOT),
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}",
            "-drive", f"if=none,id=disk,file={self.disk},format=raw",
            "-device", "virtio-blk-pci,drive=disk",
            "-netdev", f"user,id=net,{fwd}" if fwd else "user,id=net",
            "-device", "virtio-net-pci,netdev=net,romfile=",
        ]  # fmt: skip
        if self.watchdog:
            cmd += ["-device", "i6300esb", "-watchdog-action", "reset"]
        return cmd

    def start(self) -> float:
        self.console.write_bytes(b"")
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
        )
        self.started = time.monotonic()
        return self.started

    def text(self) -> str:
        try:
            return self.console.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the console past offset `after`."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.text(), after)
            if found is not None:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited ({self.proc.returncode}) waiting for {pattern!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} on the console within {timeout:.0f} s")
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
