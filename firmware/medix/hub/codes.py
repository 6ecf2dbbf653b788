"""The codes people type at the hub: Medis codes (on the patient's slip) and pairing codes
(for enrolment), as typed -> as stored, as stored -> as shown, and the hash a code is kept
under. Pure functions, no state."""

from __future__ import annotations

import hashlib

_SEPARATORS = frozenset(" \t\r\n\u00a0-.\u2010\u2011\u2012\u2013\u2014\u2212_/")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalise_code(text: str) -> str:
    """A code as typed -> upper case, separators dropped, any script's digits as ASCII."""
    out = []
    for char in text:
        if char in _SEPARATORS:
            continue
        out.append(str(int(char)) if char.isdecimal() else char.translate(_ASCII_UPPER))
    return "".join(out)


def format_code(code: str, group: int = 4) -> str:
    """A code in groups of `group` characters joined by dashes, as printed."""
    return "-".join(code[i : i + group] for i in range(0, len(code), group))


def hash_code(code: str) -> str:
    """What a one-time code is stored as: its SHA-256, hex."""
    return hashlib.sha256(code.encode()).hexdigest()
