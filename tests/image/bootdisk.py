"""A small disk laid out as an AFRA card (GPT: boot, kernel A/B, root A/B, data) with the real
boot script and boot state, booted in Debian's U-Boot for qemu: each `boot()` is one
power-on, and the boot state is read back with fw_printenv (libubootenv, as RAUC reads it).

The kernel partitions hold a stand-in arm64 Image: a valid header whose code spins, so
U-Boot hands over to it and the "system" hangs there (the watchdog's case: the attempt was
counted before the kernel ran). A slot without an Image cannot start at all."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BOOT_CMD = REPO / "image-build/boot/boot.cmd"
BOOTSTATE_SH = REPO / "image-build/bootstate.sh"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
MIB = 1 << 20
# (name, GPT type, MiB): the image's layout, smaller
LAYOUT = (
    ("afra-boot", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 8),
    ("afra-kernel-a", "BC13C2FF-59E6-4262-A352-B275FD6F7172", 4),
    ("afra-kernel-b", "BC13C2FF-59E6-4262-A352-B275FD6F7172", 4),
    ("afra-root-a", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 2),
    ("afra-root-b", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 2),
    ("afra-data", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 2),
)


def spinning_image() -> bytes:
    """An arm64 Linux Image header (booti checks its magic) whose first instruction is `b .`."""
    header = struct.pack(
        "<IIQQQQQQII",
        0x14000000,  # b .  (branch to itself)
        0,
        0,  # text_offset
        4096,  # image_size
        0x8,  # flags: little endian, may be placed anywhere (as Debian's kernel)
        0,
        0,
        0,
        0x644D5241,  # "ARM\x64"
        0,
    )
    return header.ljust(4096, b"\0")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class BootDisk:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.disk = directory / "disk.img"
        self.fw_config = directory / "fw_env.config"
        self.console = directory / "console.log"
        self.offsets: dict[str, int] = {}

    def make(self, *, kernels: tuple[str, ...] = ("A", "B")) -> BootDisk:
        total = 2 + sum(size for _, _, size in LAYOUT)
        self.disk.write_bytes(b"")
        with self.disk.open("r+b") as fp:
            fp.truncate(total * MIB)
        script = ["label: gpt"]
        start = 1
        for name, gpt_type, size in LAYOUT:
            script.append(f"start={start}MiB, size={size}MiB, type={gpt_type}, name={name}")
            self.offsets[name] = start * MIB
            start += size
        subprocess.run(
            ["sfdisk", "--quiet", str(self.disk)],
            input="\n".join(script) + "\n",
            text=True,
            check=True,
        )
        boot = self.dir / "boot"
        boot.mkdir(exist_ok=True)
        _run("mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", str(BOOT_CMD),
             str(boot / "boot.scr"))  # fmt: skip
        _run(str(BOOTSTATE_SH), str(boot))
        self._fat("afra-boot", [boot / "boot.scr", boot / "bootstate.0", boot / "bootstate.1"])
        image = self.dir / "Image"
        image.write_bytes(spinning_image())
        initrd = self.dir / "initrd.img"
        initrd.write_bytes(b"\0" * 512)
        for slot in ("A", "B"):
            files = [image, initrd] if slot in kernels else []
            self._fat(f"afra-kernel-{slot.lower()}", files)
        self.fw_config.write_text(
            f"{self.dir / 'bootstate.0'} 0x0000 0x1000\n{self.dir / 'bootstate.1'} 0x0000 0x1000\n"
        )
        return self

    def _fat(self, name: str, files: list[Path]) -> None:
        size = next(size for n, _, size in LAYOUT if n == name)
        fat = self.dir / f"{name}.vfat"
        fat.unlink(missing_ok=True)
        _run("mkfs.vfat", "-C", str(fat), str(size * 1024))
        for path in files:
            _run("mcopy", "-i", str(fat), str(path), "::")
        subprocess.run(
            ["dd", f"if={fat}", f"of={self.disk}", "bs=1M", f"seek={self.offsets[name] // MIB}",
             "conv=notrunc", "status=none"],
            check=True,
        )  # fmt: skip

    # -- the boot state as the running system sees it -------------------------------------

    def _boot_part(self) -> str:
        return f"{self.disk}@@{self.offsets['afra-boot']}"

    def pull_state(self) -> None:
        """Copy bootstate.0/.1 out of the image (what /boot/firmware holds on a box)."""
        for n in (0, 1):
            target = self.dir / f"bootstate.{n}"
            target.unlink(missing_ok=True)
            _run("mcopy", "-i", self._boot_part(), f"::bootstate.{n}", str(target))

    def push_state(self) -> None:
        for n in (0, 1):
            _run("mcopy", "-o", "-i", self._boot_part(), str(self.dir / f"bootstate.{n}"), "::")

    def state(self) -> dict[str, str]:
        """The boot state as fw_printenv (and so RAUC) reads it."""
        self.pull_state()
        out = _run("fw_printenv", "-c", str(self.fw_config))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def set_state(self, **values: str) -> None:
        """Change the boot state as RAUC does on the box (fw_setenv), in one write."""
        self.pull_state()
        script = self.dir / "fw_setenv.script"
        script.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        _run("fw_setenv", "-c", str(self.fw_config), "-s", str(script))
        self.push_state()

    def corrupt(self, n: int) -> None:
        """Damage one copy's variables (a write cut off by a power loss)."""
        self.pull_state()
        path = self.dir / f"bootstate.{n}"
        data = bytearray(path.read_bytes())
        data[10:20] = b"\xff" * 10
        path.write_bytes(bytes(data))
        self.push_state()

    # -- a power-on ------------------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> str:
        """One power-on: the console until U-Boot hands over to a kernel (which then spins:
        the power is cut) or restarts (qemu -no-reboot ends)."""
        self.console.write_bytes(b"")
        proc = subprocess.Popen(
            [
                "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-m", "512M",
                "-bios", str(UBOOT), "-no-reboot", "-display", "none", "-monitor", "none",
                "-serial", f"file:{self.console}", "-nic", "none",
                "-drive", f"if=none,id=d,file={self.disk},format=raw",
                "-device", "virtio-blk-pci,drive=d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                text = self.console.read_text(errors="replace")
                if "Starting kernel" in text:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"U-Boot did not finish: {text[-2000:]}")
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        return self.console.read_text(errors="replace")


def afra_lines(console: str) -> list[str]:
    return re.findall(r"^afra: .*$", console, re.M)
