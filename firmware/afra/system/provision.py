"""A card's provisioning and the box's id: what `make label` (afra-flash) writes onto the boot
partition for one box, and how the box takes it onto its data partition at its first start.

On the card, in the boot partition's `afra/` folder (FAT, readable only with the card in hand):

    box.json        {"box_id": "3fa9c1", "setup_code_hash": "scrypt$..."}: the id printed on the
                    label (and in the host name afra-<id>) and the label's setup code, hashed;
                    the code itself is never written to the card
    settings.toml   optional: settings pre-staged for the center (the wizard's overlay file)

At boot, afra-identity.service (root, a few lines of shell) moves the folder from the card
to `<data_dir>/provision/`, owned by afra. `afra run` then calls `take_provisioning`: each
file is checked and put in its place, and only then is the inbox removed. A file that fails
its check is left out with an error in the journal; the box then makes its own id and is
claimed with the button.

The box id is kept in `<data_dir>/box-id`, outside everything a factory reset removes, so the
label stays true for the life of the box. A box whose card carried no id takes the first six
hex digits of the SHA-256 of its node key, made at its first start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from afra import datadir
from afra.datadir import DataDir
from afra.errors import AfraError
from afra.medis.codes import format_code, new_code
from medix.durable import fsync_dir, write_private
from medix.passwords import hash_secret

LOG = logging.getLogger("afra.system")

CARD_DIR = "afra"
INBOX = datadir.INBOX
BOX_FILE = "box.json"
SETTINGS_FILE = "settings.toml"
BOX_ID_RE = re.compile(r"^[0-9a-f]{6}$")
HASH_RE = re.compile(r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
MAX_SETTINGS_BYTES = 64 * 1024


class ProvisioningError(AfraError, ValueError):
    """A card's provisioning file is not what afra-flash writes."""


@dataclass(frozen=True)
class CardProvisioning:
    box_id: str
    setup_code_hash: str
    settings_toml: str | None = None

    def check(self) -> None:
        if not BOX_ID_RE.match(self.box_id):
            raise ProvisioningError(f"box id {self.box_id!r} is not six lowercase hex digits")
        if not HASH_RE.match(self.setup_code_hash):
            raise ProvisioningError("the setup code's hash is not an scrypt hash")
        if self.settings_toml is not None:
            if len(self.settings_toml.encode("utf-8")) > MAX_SETTINGS_BYTES:
                raise ProvisioningError("settings.toml is larger than 64 KiB")
            try:
                data = tomllib.loads(self.settings_toml)
            except tomllib.TOMLDecodeError as exc:
                raise ProvisioningError(f"settings.toml is not TOML: {exc}") from None
            if "data_dir" in data.get("box", {}):
                raise ProvisioningError("settings.toml cannot move box.data_dir")

    def write_card_files(self, directory: Path) -> list[Path]:
        """The files for the card's `afra/` folder (afra-flash copies them onto the card)."""
        self.check()
        directory.mkdir(parents=True, exist_ok=True)
        doc = {"box_id": self.box_id, "setup_code_hash": self.setup_code_hash}
        written = [directory / BOX_FILE]
        written[0].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if self.settings_toml is not None:
            written.append(directory / SETTINGS_FILE)
            written[1].write_text(self.settings_toml, encoding="utf-8")
        return written


def read_card(card_dir: Path) -> CardProvisioning | None:
    """The provisioning in a card's `afra/` folder; None when the folder is not there."""
    box_file = card_dir / BOX_FILE
    if not box_file.exists():
        return None
    try:
        doc = json.loads(box_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"{box_file} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise ProvisioningError(f"{box_file} is not a JSON object")
    settings_file = card_dir / SETTINGS_FILE
    settings = None
    if settings_file.exists():
        try:
            settings = settings_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisioningError(f"{settings_file} is unreadable: {exc}") from None
    card = CardProvisioning(
        box_id=str(doc.get("box_id", "")),
        setup_code_hash=str(doc.get("setup_code_hash", "")),
        settings_toml=settings,
    )
    card.check()
    return card


def take_provisioning(inbox: Path, data_dir: Path) -> list[str]:
    """Put a card's provisioning (moved to `inbox`) in its places under `data_dir`; what was
    taken. Nothing is removed from the inbox until everything taken is durable."""
    try:
        card = read_card(inbox)
    except ProvisioningError as exc:
        LOG.error("the card's provisioning is not used: %s", exc)
        shutil.rmtree(inbox, ignore_errors=True)
        return []
    if card is None:
        return []
    layout = DataDir(data_dir)
    taken = [datadir.BOX_ID, f"{datadir.WEB}/{datadir.SETUP_CODE_HASH}"]
    layout.web.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(layout.box_id, f"{card.box_id}\n".encode("ascii"))
    write_private(layout.setup_code_hash, f"{card.setup_code_hash}\n".encode("ascii"))
    if card.settings_toml is not None:
        overlay = layout.overlay
        if overlay.exists():
            LOG.warning("pre-staged settings not used: %s already holds settings", overlay)
        else:
            write_private(overlay, card.settings_toml.encode("utf-8"))
            taken.append(datadir.OVERLAY)
    shutil.rmtree(inbox)
    fsync_dir(data_dir)
    LOG.warning("took the card's provisioning (box id %s): %s", card.box_id, ", ".join(taken))
    return taken


def key_box_id(key_path: Path) -> str:
    """A box id from the node's key: the first six hex digits of its public key's SHA-256."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:6]


def box_id(data_dir: Path, key_path: Path) -> str:
    """The box's id: the one the card gave (or an earlier start made), else the key's."""
    try:
        stored = DataDir(data_dir).box_id.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        stored = ""
    if BOX_ID_RE.match(stored):
        return stored
    return key_box_id(key_path)


def ensure_box_id(data_dir: Path, key_path: Path) -> str:
    """The box id, written to `<data_dir>/box-id` when it is not there yet (first start)."""
    path = DataDir(data_dir).box_id
    current = box_id(data_dir, key_path)
    if not path.exists():
        write_private(path, f"{current}\n".encode("ascii"))
    return current


def new_setup_code(data_dir: Path, *, force: bool = False) -> str:
    """Make the box's setup code, keep only its hash; return it grouped for the label.

    The code has the Medis code's form (12 symbols without look-alikes, the last a check
    symbol), so a typo is caught before it counts as a wrong guess. `afra setup-code` calls
    this when an image is made for one box; an emulated box makes a fresh one each run."""
    path = DataDir(data_dir).setup_code_hash
    if path.exists() and not force:
        raise FileExistsError(
            f"{path} already holds a setup code; the label shows it (--force makes a new one)"
        )
    code = new_code()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, (hash_secret(code) + "\n").encode("ascii"))
    return format_code(code)


def admin_password_set(data_dir: Path) -> bool:
    """Whether the box has been claimed: the wizard's admin password exists."""
    return DataDir(data_dir).admin_hash.exists()
