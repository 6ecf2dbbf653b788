"""The Medis code: issuing, checking, formatting and parsing the per-study patient code.

A code is 11 random payload symbols and 1 check symbol from a 31-symbol alphabet that leaves out
the look-alikes 0, O, 1, I and L. The canonical form is 12 upper-case symbols without separators;
people see it grouped as ``XXXX-XXXX-XXXX``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from afra.errors import AfraError

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PAYLOAD_LENGTH = 11
CODE_LENGTH = PAYLOAD_LENGTH + 1
GROUP_SIZE = 4
ISSUE_ATTEMPTS = 20

_BASE = len(ALPHABET)
_VALUE = {symbol: value for value, symbol in enumerate(ALPHABET)}
# The check symbol sits at position 12; dividing by its weight is multiplying by 12^-1 mod 31.
_CHECK_WEIGHT_INVERSE = pow(CODE_LENGTH, -1, _BASE)
# Separators people put between groups, including the dashes phones substitute for "-".
_SEPARATORS = frozenset(" \t\r\n\u00a0-.\u2010\u2011\u2012\u2013\u2014\u2212")
# Only ASCII letters are upper-cased: str.upper() turns "ß" into "SS" and dotless i into "I".
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NEVER_USED = "codes never contain 0, O, 1, I or L"

assert _BASE == 31 and len(_VALUE) == _BASE, "the check needs 31 distinct symbols (a prime)"


class InvalidCodeError(AfraError, ValueError):
    """Text is not a Medis code; the message tells the person what to fix."""


class CodeIssueError(AfraError, RuntimeError):
    """No free code was found within the attempt limit (the uniqueness check is broken)."""


def _weighted_sum(values: list[int]) -> int:
    # Position i (1-based) has weight i; all 12 weights are distinct and nonzero mod 31.
    return sum(position * value for position, value in enumerate(values, start=1)) % _BASE


def _check_value(payload: list[int]) -> int:
    # Proof the check catches every single error: a substitution changes the sum by w*d with
    # w, d != 0 mod 31 (31 prime), and swapping neighbours a, b changes it by (w_i - w_i+1)(a - b)
    # = +-(a - b) != 0. So sum(i * v_i) == 0 (mod 31) fails after either.
    return (-_weighted_sum(payload) * _CHECK_WEIGHT_INVERSE) % _BASE


def new_code(rng: Callable[[int], int] | None = None) -> str:
    """A fresh code in canonical form; an injected `rng(n)` must return an int in [0, n)."""
    draw = secrets.randbelow if rng is None else rng
    payload = [draw(_BASE) for _ in range(PAYLOAD_LENGTH)]
    if any(not 0 <= value < _BASE for value in payload):
        raise ValueError(f"rng returned a value outside [0, {_BASE})")
    payload.append(_check_value(payload))
    return "".join(ALPHABET[value] for value in payload)


def format_code(code: str) -> str:
    """The code grouped for reading aloud: ``K7QM-2XHP-9RTC``; accepts any form parse_code does."""
    canonical = parse_code(code)
    groups = (canonical[i : i + GROUP_SIZE] for i in range(0, CODE_LENGTH, GROUP_SIZE))
    return "-".join(groups)


def _normalize_char(char: str) -> str:
    if char.isdecimal():
        # Persian and Arabic keyboards type their own digits; int() reads them all.
        return str(int(char))
    return char.translate(_ASCII_UPPER)


def parse_code(text: str) -> str:
    """The canonical form of a code as a person typed it; raises InvalidCodeError otherwise.

    Case and separators (spaces, hyphens, dots) are ignored. Look-alikes are not guessed: 0, O,
    1, I and L are rejected with a message saying codes never contain them.
    """
    symbols: list[str] = []
    for char in text:
        if char in _SEPARATORS:
            continue
        symbol = _normalize_char(char)
        if symbol not in _VALUE:
            shown = char if char == symbol else f"{char} ({symbol})"
            raise InvalidCodeError(
                f"the code cannot contain {shown!r}: it uses only the digits 2-9 and the letters "
                f"A-Z; {_NEVER_USED}"
            )
        symbols.append(symbol)
    if len(symbols) != CODE_LENGTH:
        raise InvalidCodeError(f"a code has {CODE_LENGTH} characters, this one has {len(symbols)}")
    if _weighted_sum([_VALUE[symbol] for symbol in symbols]) != 0:
        raise InvalidCodeError(
            "the code has a typo: one character is wrong or two are swapped; "
            "please check it against the slip"
        )
    return "".join(symbols)


def is_valid(text: str) -> bool:
    """True if parse_code accepts the text."""
    try:
        parse_code(text)
    except InvalidCodeError:
        return False
    return True


class CodeIssuer:
    """Draws codes until one is free; the caller's database is the judge of 'taken'."""

    def __init__(
        self, rng: Callable[[int], int] | None = None, *, attempts: int = ISSUE_ATTEMPTS
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._rng = rng
        self._attempts = attempts

    def issue(self, is_taken: Callable[[str], bool]) -> str:
        """A code for which `is_taken` is False; CodeIssueError after `attempts` draws."""
        for _ in range(self._attempts):
            code = new_code(self._rng)
            if not is_taken(code):
                return code
        # With 31**11 payloads, 20 collisions in a row mean is_taken is wrong, not bad luck.
        raise CodeIssueError(f"every one of {self._attempts} drawn codes was reported taken")
