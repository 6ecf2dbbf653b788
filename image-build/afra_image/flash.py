"""afra-flash (`make label`): write an AFRA image onto a card (or an image file) for one box,
with that box's id and setup code, and print its label.

    python -m afra_image.flash IMAGE TARGET [--settings site.toml] [--labels DIR] [--yes]

IMAGE is build/afra-<version>-arm64.img.xz (or the .img); its .sha256 is checked when it is
beside it. TARGET is a block device (an SD card or USB SSD: refused while mounted, and only
with --yes) or an image file (made or overwritten; image-test boots one). The box id (six hex
digits: the host name afra-<id> and the label) and the setup code (the Medis code's form)
are made here; only the code's scrypt hash goes onto the card, in the boot partition's afra/
folder, with the optional pre-staged settings (the wizard's settings file, checked first).
The label (box id, setup code, a QR code of the setup address) is written as PNG and PDF
into --labels and each box made is added to labels/boxes.csv, so an id is never given twice
from one provisioning station.
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import json
import lzma
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

from afra.config import load_config
from afra.errors import ConfigError
from afra.medis.codes import format_code, new_code
from afra.system.provision import CARD_DIR, CardProvisioning, ProvisioningError
from afra_web.state import hash_secret

CHUNK = 4 << 20
SECTOR = 512
DPI = 300
LABEL_MM = (62, 40)  # a common label-printer tape width, and a box's underside


class FlashError(Exception):
    """The image or the target cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Box:
    box_id: str
    setup_code: str  # as printed: XXXX-XXXX-XXXX
    version: str

    @property
    def setup_url(self) -> str:
        return f"http://afra-{self.box_id}.local/"


# -- the image ---------------------------------------------------------------------------------


def _chunks(image: Path) -> Iterator[bytes]:
    opener = lzma.open if image.suffix == ".xz" else open
    with opener(image, "rb") as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def check_image(image: Path) -> str:
    """The image's version (from its name); its SHA-256 checked against the .sha256 file."""
    if not image.is_file():
        raise FlashError(f"{image} does not exist: build it with `make image`")
    name = image.name
    if not (name.startswith("afra-") and (name.endswith(".img") or name.endswith(".img.xz"))):
        raise FlashError(f"{image} is not an AFRA image (afra-<version>-arm64.img[.xz])")
    sums = image.with_name(name + ".sha256")
    if sums.exists():
        expected = sums.read_text(encoding="ascii").split()[0]
        digest = hashlib.sha256()
        with image.open("rb") as fp:
            while chunk := fp.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise FlashError(f"{image} does not match {sums.name}: download or build it again")
    return name.removeprefix("afra-").split("-arm64")[0]


def in_use(device: Path) -> list[str]:
    """What holds the disk or one of its partitions: mounts, swap, or a device stacked on it
    (LVM, LUKS, RAID), so that --yes never erases the machine's own disk."""
    real = device.resolve()
    name = real.name
    sysfs = Path("/sys/class/block") / name
    parts = {real} | {Path("/dev") / p.name for p in sysfs.glob(f"{name}*") if p.name != name}

    def ours(source: str) -> bool:
        return Path(source) in parts

    found = []
    for table, what in (("/proc/mounts", "mounted at {}"), ("/proc/swaps", "swap")):
        try:
            lines = Path(table).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields and ours(fields[0]):
                found.append(what.format(fields[1] if len(fields) > 1 else ""))
    for block in [sysfs, *(sysfs / p.name for p in sysfs.glob(f"{name}*"))]:
        for holder in sorted((block / "holders").glob("*")):
            found.append(f"held by {holder.name} (LVM, LUKS or RAID)")
    # The kernel's own answer covers what names miss (a root mounted as /dev/root, ZFS): an
    # exclusive open of a disk fails while it or one of its partitions is in use.
    try:
        os.close(os.open(real, os.O_RDONLY | os.O_EXCL))
    except OSError as exc:
        if exc.errno == errno.EBUSY and not found:
            found.append("busy: the system is using it")
    return found


def write_image(image: Path, target: Path, *, yes: bool) -> None:
    """Copy the image onto a block device (whole, synced) or into an image file (sparse)."""
    block = target.exists() and stat.S_ISBLK(target.stat().st_mode)
    if block:
        if not yes:
            raise FlashError(f"{target} is a disk: everything on it is erased; add --yes")
        used = in_use(target)
        if used:
            raise FlashError(f"{target} is in use ({', '.join(used)}): it is not a card to erase")
    elif target.exists() and not target.is_file():
        raise FlashError(f"{target} is neither a disk nor an image file")
    flags = os.O_WRONLY | (0 if block else os.O_CREAT | os.O_TRUNC)
    fd = os.open(target, flags, 0o644)
    try:
        written = 0
        for chunk in _chunks(image):
            if not block and not chunk.count(0) - len(chunk):  # all zeros: leave a hole
                os.lseek(fd, len(chunk), os.SEEK_CUR)
            else:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            written += len(chunk)
        if not block:
            os.ftruncate(fd, written)
        os.fsync(fd)
    finally:
        os.close(fd)


def boot_partition_offset(target: Path) -> int:
    """Byte offset of partition 1 (the FAT boot partition), from the GPT."""
    done = subprocess.run(
        ["sfdisk", "--json", str(target)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise FlashError(f"{target} has no readable partition table: {done.stderr.strip()}")
    parts = json.loads(done.stdout)["partitiontable"]["partitions"]
    boot = next((p for p in parts if p.get("name") == "afra-boot"), None)
    if boot is None:
        raise FlashError(f"{target} has no afra-boot partition: is it an AFRA image?")
    return int(boot["start"]) * SECTOR


# -- the box -------------------------------------------------------------------------------------


def _issued(labels: Path) -> set[str]:
    try:
        with (labels / "boxes.csv").open(encoding="utf-8") as fp:
            return {row["box_id"] for row in csv.DictReader(fp)}
    except FileNotFoundError:
        return set()


def new_box(version: str, labels: Path) -> Box:
    issued = _issued(labels)
    while True:
        box_id = secrets.token_hex(3)
        if box_id not in issued:
            return Box(box_id=box_id, setup_code=format_code(new_code()), version=version)


def check_settings(path: Path | None) -> str | None:
    """Pre-staged settings: read, and checked against the whole configuration."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashError(f"{path} cannot be read: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "settings.toml").write_text(text, encoding="utf-8")
        base = data / "afra.toml"
        base.write_text(f'[box]\ndata_dir = "{data}"\n', encoding="utf-8")
        try:
            load_config(base, environ={})
        except ConfigError as exc:
            raise FlashError(f"{path}: {exc}") from None
    return text


def card_for(box: Box, settings: str | None) -> CardProvisioning:
    """The card's afra/ folder, checked (before anything is written)."""
    card = CardProvisioning(
        box_id=box.box_id,
        setup_code_hash=hash_secret(box.setup_code.replace("-", "")),
        settings_toml=settings,
    )
    try:
        card.check()
    except ProvisioningError as exc:
        raise FlashError(str(exc)) from None
    return card


def provision(target: Path, card: CardProvisioning) -> None:
    """Write the box's afra/ folder onto the target's boot partition (mtools: no mount)."""
    offset = boot_partition_offset(target)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / CARD_DIR
        card.write_card_files(folder)
        image = f"{target}@@{offset}"
        subprocess.run(["mdeltree", "-i", image, f"::{CARD_DIR}"], capture_output=True, check=False)
        done = subprocess.run(
            ["mcopy", "-s", "-o", "-i", image, str(folder), "::"], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise FlashError(f"the boot partition could not be written: {done.stderr.strip()}")
    if stat.S_ISBLK(target.stat().st_mode):
        subprocess.run(["sync"], check=False)


# -- the label ------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


QR_MM = 27  # scans from a phone at arm's length; leaves a 30 mm column for the text
GUTTER_MM = 2


def _fitted(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> ImageFont.ImageFont:
    """The largest font up to `size` in which `text` fits `width` pixels."""
    while True:
        font = _font(size)
        if size <= 8 or draw.textlength(text, font=font) <= width:
            return font  # type: ignore[return-value]
        size -= 1


def qr_left(width: int) -> int:
    """Where the QR code begins on a label `width` pixels wide."""
    mm = DPI / 25.4
    return width - int(QR_MM * mm) - int(GUTTER_MM * mm)


def render_label(box: Box) -> Image.Image:
    """The label: product, box id, setup code and the setup address with its QR code.

    Each line is set in the largest size that fits the column left of the QR code, so a
    long version or address shrinks instead of running into the code."""
    mm = DPI / 25.4
    width, height = int(LABEL_MM[0] * mm), int(LABEL_MM[1] * mm)
    label = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(label)
    qr = segno.make(box.setup_url, error="m")
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=1, border=2)
    buffer.seek(0)
    side = int(QR_MM * mm)
    code_image = Image.open(buffer).convert("L").resize((side, side), Image.Resampling.NEAREST)
    left = qr_left(width)
    label.paste(code_image, (left, (height - side) // 2))
    x, y = int(3 * mm), int(3 * mm)
    column = left - x - int(GUTTER_MM * mm)
    lines = (
        (3.2, "AFRA adaptor"),
        (2.4, f"Box afra-{box.box_id}"),
        (2.0, "Setup code"),
        (3.4, box.setup_code),
        (1.8, box.setup_url),
        (1.6, f"image {box.version}"),
    )
    for size_mm, text in lines:
        font = _fitted(draw, text, int(size_mm * mm), column)
        draw.text((x, y), text, fill=0, font=font)
        y += int(int(size_mm * mm) * 1.35)
    return label


def save_label(box: Box, labels: Path) -> tuple[Path, Path]:
    """The label files; readable by this user only (they carry setup codes)."""
    labels.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(labels, 0o700)
    image = render_label(box)
    png = labels / f"afra-{box.box_id}.png"
    pdf = labels / f"afra-{box.box_id}.pdf"
    old = os.umask(0o077)
    try:
        image.save(png, dpi=(DPI, DPI))
        image.convert("RGB").save(pdf, resolution=DPI)
    finally:
        os.umask(old)
    new_file = not (labels / "boxes.csv").exists()
    with (labels / "boxes.csv").open("a", encoding="utf-8", newline="") as fp:
        writer = csv.writer(fp)
        if new_file:
            writer.writerow(["box_id", "image_version", "made_at"])
        writer.writerow(
            [box.box_id, box.version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
        )
    return png, pdf


def forget_box(box: Box, labels: Path, *files: Path) -> None:
    """The label of a card that was not written, and its line in boxes.csv, removed."""
    for path in files:
        path.unlink(missing_ok=True)
    table = labels / "boxes.csv"
    if table.exists():
        rows = table.read_text(encoding="utf-8").splitlines(keepends=True)
        table.write_text("".join(r for r in rows if not r.startswith(f"{box.box_id},")))


def flash(
    image: Path, target: Path, *, labels: Path, settings: Path | None = None, yes: bool = False
) -> tuple[Box, Path, Path]:
    version = check_image(image)
    staged = check_settings(settings)
    box = new_box(version, labels)
    card = card_for(box, staged)
    # The label first: if it cannot be saved, no card exists whose setup code is lost.
    try:
        png, pdf = save_label(box, labels)
    except OSError as exc:
        raise FlashError(f"the label cannot be saved in {labels}: {exc}") from None
    try:
        write_image(image, target, yes=yes)
        provision(target, card)
    except BaseException:
        forget_box(box, labels, png, pdf)
        raise
    return box, png, pdf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="afra-flash", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="build/afra-<version>-arm64.img.xz or .img")
    parser.add_argument("target", type=Path, help="a card's block device, or an image file")
    parser.add_argument("--settings", type=Path, help="settings to pre-stage (settings.toml)")
    parser.add_argument("--labels", type=Path, default=Path("build/labels"))
    parser.add_argument("--yes", action="store_true", help="erase a disk given as TARGET")
    args = parser.parse_args(argv)
    try:
        box, png, pdf = flash(
            args.image, args.target, labels=args.labels, settings=args.settings, yes=args.yes
        )
    except FlashError as exc:
        print(f"afra-flash: {exc}", file=sys.stderr)
        return 2
    print(f"box id:      {box.box_id} (host name afra-{box.box_id})")
    print(f"setup code:  {box.setup_code}")
    print(f"setup page:  {box.setup_url}")
    print(f"label:       {png} and {pdf}")
    print(f"written:     {args.target} ({box.version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
