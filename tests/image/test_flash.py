"""A card for one box: afra-flash writes the image, the box id and the setup code's hash, and
the label; the box takes the card's provisioning when it starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from afra.config import load_config
from afra.panel.reset import factory_reset
from afra.system.provision import (
    INBOX,
    CardProvisioning,
    box_id,
    ensure_box_id,
    key_box_id,
    take_provisioning,
)
from afra.uplink.identity import NodeIdentity
from afra_image.flash import Box, FlashError, flash, in_use, qr_left, render_label
from afra_web.state import verify_secret

MIB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A stand-in for build/afra-<v>-arm64.img: the real layout's first partition (FAT,
    afra-boot) and a data partition, small."""
    path = tmp_path / "afra-9.9.9-arm64.img"
    with path.open("wb") as fp:
        fp.truncate(20 * MIB)
    subprocess.run(
        ["sfdisk", "--quiet", str(path)],
        input="label: gpt\nstart=1MiB, size=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
        "name=afra-boot\nsize=8MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=afra-data\n",
        text=True,
        check=True,
    )
    fat = tmp_path / "boot.vfat"
    subprocess.run(["mkfs.vfat", "-C", str(fat), str(8 * 1024)], check=True, capture_output=True)
    subprocess.run(
        ["dd", f"if={fat}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc", "status=none"],
        check=True,
    )
    return path


def card_file(target: Path, name: str) -> str:
    done = subprocess.run(
        ["mtype", "-i", f"{target}@@{MIB}", f"::afra/{name}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_card_carries_the_box_id_and_only_the_hash_of_its_setup_code(
    image: Path, tmp_path: Path
) -> None:
    target = tmp_path / "card.img"
    box, png, pdf = flash(image, target, labels=tmp_path / "labels")
    assert target.read_bytes()[:MIB] == image.read_bytes()[:MIB]  # the partition table
    doc = json.loads(card_file(target, "box.json"))
    assert doc["box_id"] == box.box_id and len(box.box_id) == 6
    assert verify_secret(box.setup_code.replace("-", ""), doc["setup_code_hash"])
    raw = target.read_bytes()
    assert (
        box.setup_code.encode() not in raw and box.setup_code.replace("-", "").encode() not in raw
    )
    assert png.stat().st_mode & 0o077 == 0 and pdf.stat().st_mode & 0o077 == 0  # setup codes
    with Image.open(png) as label:
        assert label.size == (732, 472)  # 62 x 40 mm at 300 dpi
    assert pdf.read_bytes().startswith(b"%PDF")
    assert box.setup_url == f"http://afra-{box.box_id}.local/"
    rows = (tmp_path / "labels/boxes.csv").read_text().splitlines()
    assert rows[1].startswith(f"{box.box_id},9.9.9,")


@pytest.mark.parametrize("version", ["0.1.0", "12.34.567rc8"])
def test_the_label_text_never_runs_into_the_qr_code(version: str) -> None:
    # W and M are the widest letters of the code's alphabet
    label = render_label(Box(box_id="ffffff", setup_code="WWWW-MMMM-WWWW", version=version))
    left = qr_left(label.width)
    gutter = label.crop((left - 12, 0, left, label.height))  # 1 mm left of the code
    assert gutter.getextrema() == (255, 255)
    text = label.crop((0, 0, left - 12, label.height))
    assert text.getextrema()[0] == 0  # the text is there


def test_pre_staged_settings_go_onto_the_card_only_when_they_are_valid(
    image: Path, tmp_path: Path
) -> None:
    good = tmp_path / "site.toml"
    good.write_text('[dicom]\npeers = [{ ae_title = "CT1", host = "10.1.2.3" }]\n')
    flash(image, tmp_path / "a.img", labels=tmp_path / "labels", settings=good)
    assert "CT1" in card_file(tmp_path / "a.img", "settings.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 99999\n")
    with pytest.raises(FlashError, match=r"dicom\.port"):
        flash(image, tmp_path / "b.img", labels=tmp_path / "labels", settings=bad)
    assert not (tmp_path / "b.img").exists()  # nothing written for a bad settings file


def test_the_machines_own_disk_is_seen_as_in_use() -> None:
    """Read only: the disk holding / is reported, so --yes would be refused on it."""
    root = next(
        line.split()[0]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1] == "/" and line.startswith("/dev/")
    )
    disk = Path(root).resolve()
    whole = Path("/sys/class/block") / disk.name / "partition"
    if whole.exists():  # a partition: its disk is the parent in sysfs
        disk = Path("/dev") / (Path("/sys/class/block") / disk.name).resolve().parent.name
    assert any("mounted at /" in reason for reason in in_use(disk))


def test_a_disk_is_never_erased_without_yes(image: Path, tmp_path: Path) -> None:
    disk = Path("/dev/loop7")  # a block device node present on the machine, not touched
    assert disk.is_block_device()
    with pytest.raises(FlashError, match="add --yes"):
        flash(image, disk, labels=tmp_path / "labels")


def test_a_file_that_is_not_an_afra_image_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "raspios.img"
    other.write_bytes(b"\0" * 1024)
    with pytest.raises(FlashError, match="not an AFRA image"):
        flash(other, tmp_path / "card.img", labels=tmp_path / "labels")


def test_a_damaged_image_is_refused_by_its_checksum(image: Path, tmp_path: Path) -> None:
    (image.parent / (image.name + ".sha256")).write_text(f"{'0' * 64}  {image.name}\n")
    with pytest.raises(FlashError, match="does not match"):
        flash(image, tmp_path / "card.img", labels=tmp_path / "labels")


# -- the box takes it -------------------------------------------------------------------------


def _inbox(data: Path, **files: str) -> Path:
    inbox = data / INBOX
    inbox.mkdir(parents=True)
    for name, text in files.items():
        (inbox / name).write_text(text)
    return inbox


def test_the_box_takes_the_cards_provisioning_and_keeps_its_id_across_a_factory_reset(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    card = CardProvisioning(
        "3fa9c1", "scrypt$16384$8$1$c2FsdA==$aGFzaA==", "[study]\nstable_age = 7\n"
    )
    card.write_card_files(data / INBOX)
    base = tmp_path / "afra.toml"
    base.write_text(f'[box]\ndata_dir = "{data}"\n')
    taken = take_provisioning(data / INBOX, data)
    assert taken == ["box-id", "web/setup-code.hash", "settings.toml"]
    assert not (data / INBOX).exists()
    assert load_config(base, environ={}).study.stable_age == 7  # pre-staged, in effect
    identity = NodeIdentity(data / "identity")
    identity.ensure_key()
    assert box_id(data, identity.key_path) == "3fa9c1"  # the label's, not the key's
    factory_reset(data)
    assert (data / "web/setup-code.hash").exists() and box_id(data, identity.key_path) == "3fa9c1"


def test_a_card_without_provisioning_gets_an_id_from_its_key_once(tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path / "identity")
    identity.ensure_key()
    first = ensure_box_id(tmp_path, identity.key_path)
    assert first == key_box_id(identity.key_path)
    (identity.key_path).unlink()  # a factory reset makes a new key...
    identity.ensure_key()
    assert ensure_box_id(tmp_path, identity.key_path) == first  # ...the box keeps its id


@pytest.mark.parametrize(
    "box_json",
    [
        '{"box_id": "ZZZ", "setup_code_hash": "scrypt$1$1$1$a$b"}',
        '{"box_id": "3fa9c1", "setup_code_hash": "plain-text-code"}',
        "not json",
    ],
)
def test_a_provisioning_file_that_is_not_what_afra_flash_writes_is_not_used(
    tmp_path: Path, box_json: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = _inbox(tmp_path, **{"box.json": box_json})
    assert take_provisioning(inbox, tmp_path) == []
    assert not (tmp_path / "box-id").exists() and not (tmp_path / "web").exists()
    assert "not used" in caplog.text


def test_pre_staged_settings_never_replace_what_the_wizard_saved(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[box]\nname = "set-in-the-wizard"\n')
    inbox = _inbox(
        tmp_path,
        **{
            "box.json": '{"box_id": "abc123", "setup_code_hash": "scrypt$1$1$1$YQ==$Yg=="}',
            "settings.toml": '[box]\nname = "from-the-card"\n',
        },
    )
    assert "settings.toml" not in take_provisioning(inbox, tmp_path)
    assert "set-in-the-wizard" in (tmp_path / "settings.toml").read_text()


def test_a_card_that_cannot_be_written_leaves_no_label_behind(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir" / "card.img"  # its folder does not exist: the write fails
    with pytest.raises(OSError):
        flash(image, target, labels=tmp_path / "labels")
    assert list((tmp_path / "labels").glob("afra-*")) == []
    assert (tmp_path / "labels/boxes.csv").read_text().splitlines() == [
        "box_id,image_version,made_at"
    ]
