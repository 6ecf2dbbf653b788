"""Light patterns evaluated at a moment: whether an LED is lit is a pure function of time.

A pattern is a tuple of seconds, alternately on and off, starting with on. Nothing here
sleeps or runs a thread: the panel asks `lit(steps, elapsed)` on each tick of its (injected)
clock, tests ask it at chosen moments, and `afra status` asks it for "now" from the status
file written by the running box.
"""

from __future__ import annotations

from collections.abc import Sequence


def lit(steps: Sequence[float], elapsed: float, *, once: bool = False) -> bool:
    """Whether the pattern is in an "on" step `elapsed` seconds after it started.

    Repeating patterns wrap around (also backwards: another process's clock may be a little
    behind); a `once` pattern is dark before its start and after its last step.
    """
    period = sum(steps)
    if period <= 0:
        return False
    if once:
        if not 0 <= elapsed < period:
            return False
        t = elapsed
    else:
        t = elapsed % period
    for i, step in enumerate(steps):
        if t < step:
            return i % 2 == 0
        t -= step
    return False


def announce_steps(
    address: str | None,
    *,
    digit: Sequence[float],
    zero: Sequence[float],
    gap: float,
    no_address: Sequence[float],
) -> tuple[float, ...]:
    """The one-shot pattern that blinks the last octet of an IPv4 address, digit by digit.

    192.168.1.37 -> 3 blinks, a pause, 7 blinks; a 0 digit is one long blink. Without an
    address (no network yet) the pattern is one long light.
    """
    if not address or address.count(".") != 3:
        return tuple(no_address)
    octet = address.rsplit(".", 1)[1]
    steps: list[float] = []
    for n, ch in enumerate(octet):
        if n:
            steps[-1] += gap
        value = int(ch)
        steps += list(zero) if value == 0 else list(digit) * value
    return tuple(steps)
