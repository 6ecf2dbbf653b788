"""The wizard's field checks. Each returns a value or an `Msg` (English text, translated when
shown) that the template puts next to the field it is about."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from afra.config import Peer


@dataclass(frozen=True)
class Msg:
    """A message to show: English text (the catalogue key) and its parameters."""

    text: str
    params: dict[str, Any] = field(default_factory=dict)


Errors = dict[str, Msg]

PASSWORD_MIN = 10
PASSPHRASE_MIN = 16  # from this length any characters will do
PASSWORD_MAX = 256
# The passwords people choose first; any of these inside a password makes it weak.
WEAK_PARTS = (
    "password",
    "passwort",
    "admin",
    "afra",
    "medix",
    "qwerty",
    "123456",
    "654321",
    "abcdef",
    "letmein",
    "welcome",
    "iloveyou",
    "radiology",
    "dicom",
    "pacs",
    "1q2w3e",
    "asdfgh",
    "zxcvbn",
    "111111",
    "000000",
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_password(password: str, confirm: str, *, avoid: tuple[str, ...] = ()) -> Errors:
    errors: Errors = {}
    kinds = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    lowered = password.lower()
    if len(password) < PASSWORD_MIN:
        errors["password"] = Msg(
            "Use at least {n} characters (this one has {m}).",
            {"n": PASSWORD_MIN, "m": len(password)},
        )
    elif len(password) > PASSWORD_MAX:
        errors["password"] = Msg("Use at most {n} characters.", {"n": PASSWORD_MAX})
    elif any(part in lowered for part in WEAK_PARTS) or any(
        a and a.lower() in lowered for a in avoid if len(a) >= 4
    ):
        errors["password"] = Msg(
            "This password contains a common word or the box's name; choose another."
        )
    elif len(set(password)) < 5:
        errors["password"] = Msg("Use more different characters.")
    elif len(password) < PASSPHRASE_MIN and kinds < 3:
        errors["password"] = Msg(
            "Mix at least three of: lower case, upper case, digits, symbols — "
            "or use a passphrase of {n} characters or more.",
            {"n": PASSPHRASE_MIN},
        )
    if confirm != password:
        errors["confirm"] = Msg("The two passwords differ.")
    return errors


def check_ae_title(value: str) -> str | Msg:
    """PS3.5: up to 16 characters of the default repertoire, no backslash, no control."""
    if not value.strip():
        return Msg("Enter an AE title.")
    if len(value) > 16:
        return Msg("An AE title has at most 16 characters; this one has {n}.", {"n": len(value)})
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return Msg("An AE title cannot contain a backslash or control characters.")
    if not value.isascii():
        return Msg("Use plain letters, digits and - _ . only (no accents, no Persian letters).")
    return value.strip()


def check_port(value: str) -> int | Msg:
    try:
        port = int(value.strip())
    except ValueError:
        return Msg("Enter a port number, 1 to 65535.")
    if not 1 <= port <= 65535:
        return Msg("Enter a port number, 1 to 65535.")
    return port


def check_host(value: str) -> str | Msg:
    """An IP address or a host name (syntax only)."""
    value = value.strip()
    if not value:
        return Msg("Enter the PACS's IP address or host name.")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value) or value.replace(".", "").isdigit():
        return Msg("This is neither an IP address nor a host name.")
    return value


def resolve_host(host: str) -> str | Msg:
    """The address the box admits as the PACS: a name is resolved once, now (peers are
    addresses so that a DNS change cannot admit someone else)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return Msg("The box cannot resolve {host}; enter its IP address.", {"host": host})
    return str(infos[0][4][0])


def parse_senders(text: str) -> list[Peer] | Msg:
    """Other senders, one per line: "AE_TITLE address-or-network"."""
    peers: list[Peer] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            return Msg(
                "Line {n}: write the AE title, a space, then its IP address or network.",
                {"n": number},
            )
        title = check_ae_title(parts[0])
        if isinstance(title, Msg):
            return Msg("Line {n}: {why}", {"n": number, "why": title})
        try:
            ipaddress.ip_network(parts[1], strict=False)
        except ValueError:
            return Msg(
                "Line {n}: {addr} is not an IP address or network (such as 10.1.2.0/24).",
                {"n": number, "addr": parts[1]},
            )
        peers.append(Peer(ae_title=title, host=parts[1]))
    return peers


def check_hub_url(value: str) -> str | Msg:
    value = value.strip().rstrip("/")
    if not value.startswith("https://") or len(value) <= len("https://") or " " in value:
        return Msg("Enter the hub's address starting with https://")
    return value


def check_pairing_code(value: str) -> str | Msg:
    value = value.strip()
    if not 6 <= len(value) <= 32:
        return Msg("Enter the pairing code shown in the hub's portal.")
    return value


def check_ca_pem(data: bytes) -> str | Msg:
    if not data.strip():
        return Msg("Choose the hub's CA certificate file (PEM).")
    if len(data) > 64 * 1024:
        return Msg("This file is too large to be a CA certificate.")
    try:
        text = data.decode("ascii")
        cert = x509.load_pem_x509_certificate(data)
    except (UnicodeDecodeError, ValueError):
        return Msg("This file is not a PEM certificate (it should begin with -----BEGIN).")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return Msg("This certificate is not a CA certificate; ask for the hub's CA file.")
    return text
