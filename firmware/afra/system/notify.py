"""systemd's notification protocol (sd_notify(3)): ready, status, stopping, watchdog pings.

`afra run` under `Type=notify` tells systemd when the box is up (READY=1) and, while the
appliance's own threads are alive, pings the service watchdog (WATCHDOG=1 every half of
`WatchdogSec`). A hung or half-dead box stops pinging, and systemd kills and restarts it.
Outside systemd (tests, `make run`) NOTIFY_SOCKET is unset and every call does nothing.

The protocol is one datagram on a Unix socket; python-systemd would bring a compiled
binding for these few lines.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence

LOG = logging.getLogger("afra.system")


class Notifier:
    """Sends notifications to the socket systemd gave in NOTIFY_SOCKET (none: no-op)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if watchdog_usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_s = int(watchdog_usec) / 1e6 or None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        if not self.address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            LOG.warning("systemd notification failed: %s", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING="1", STATUS="stopping")

    def ping(self) -> bool:
        return self.send(WATCHDOG="1")


Liveness = tuple[str, Callable[[], bool]]


class Watchdog:
    """Pings systemd's watchdog while every liveness check holds; silent otherwise.

    A check that fails is logged once (then again when it recovers), so the journal says
    which part of the box hung before systemd restarted it."""

    def __init__(self, notifier: Notifier, checks: Sequence[Liveness]) -> None:
        self.notifier = notifier
        self.checks = list(checks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()

    def alive(self) -> bool:
        failing = set()
        for name, check in self.checks:
            try:
                ok = check()
            except Exception:
                LOG.exception("liveness check %s raised", name)
                ok = False
            if not ok:
                failing.add(name)
        for name in sorted(failing - self._failing):
            LOG.error("%s is not running: the service watchdog is no longer fed", name)
        for name in sorted(self._failing - failing):
            LOG.warning("%s runs again: the service watchdog is fed again", name)
        self._failing = failing
        return not failing

    def beat(self) -> bool:
        """One ping if everything is alive; whether it was sent."""
        return self.alive() and self.notifier.ping()

    def start(self) -> None:
        interval = self.notifier.watchdog_s
        if interval is None or not self.notifier.enabled:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval / 2,), name="watchdog", daemon=True
        )
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
