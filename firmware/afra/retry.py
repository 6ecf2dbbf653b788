"""The node's one retry policy: capped exponential backoff, with jitter, from an attempt count.

The wait after failed attempt n (1 for the first failure) is `base * 2**(n - 1)`, at most
`cap`; with `jitter` j, a random share of up to j of it is taken off (0.5: between half and
all of it), so boxes that lost the hub at the same moment do not all come back at once.
The count is the caller's: the uplink keeps a study's in the index, so a restart does not
start its backoff over; the others count in memory. Waits go through the injected clock
(`Clock.sleep(seconds, stop)`), so a stop ends them and tests can drive them.

Who uses it, each with its own settings: the uplink's study deliveries (`hub.retry_base`,
`hub.retry_cap`, jitter 0.5; the wait is the study's next due time in the index, not a
sleep), webhook posts (node.delivery: `downloads.webhook_retry_base`/`_cap`), the audit
forwarders (audit.forward), a download's file upload (node.export: hub calls, parts and
resend rounds). The hub's commands keep their fixed `retry_s` (uplink.commands).

tenacity and backoff wrap a call in a loop that owns its attempt count and sleeps itself;
the uplink's count outlives the process and its wait is a due time in a queue, and every
wait here must be the injected clock's with a stop event, so a dozen lines of our own fit
where those decorators do not.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from afra.clock import Clock

# 2.0 ** 1000 is still a float; past it the cap has long applied (and an int power of two
# times a float would overflow).
_MAX_EXPONENT = 1000


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: `delay(attempt)` after the attempt-th failure in a row."""

    base: float
    cap: float
    jitter: float = 0.0  # the share of a delay that may be taken off at random (0 to 1)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1 is the first failure)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        delay = min(self.cap, self.base * 2.0**exponent)
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0)  # noqa: S311 - jitter, not secrecy
        return delay

    def sleep(self, attempt: int, clock: Clock, stop: threading.Event | None = None) -> bool:
        """Wait out `delay(attempt)` on the clock; True when `stop` was set first."""
        return clock.sleep(self.delay(attempt), stop)


def sleep_until(clock: Clock, due: float, stop: threading.Event, *, step: float = 0.5) -> bool:
    """Wait until the clock's monotonic time reaches `due`, in sleeps of at most `step`;
    True when `stop` was set first. For a wait that must last until the clock has truly
    moved (a clock moved by hand, as in tests, does not move while it sleeps)."""
    while clock.monotonic() < due:
        if clock.sleep(min(step, due - clock.monotonic()), stop):
            return True
    return False
