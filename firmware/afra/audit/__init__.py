"""The audit trail: every touch of patient data, sign-in, setting and update, as DICOM audit
messages kept on the box and sent on to an audit repository and the hub.

`Audit` is what the rest of the box holds: `audit.record(audit.events.received(...))`. The
trail keeps (trail.py), the builders say what (events.py), the forwarders send (forward.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from afra.audit.events import Actor, Events, StudyRef
from afra.audit.forward import Forwarder, SyslogTls
from afra.audit.trail import AuditTrail
from afra.clock import Clock
from afra.config import AuditSettings
from afra.datadir import DataDir
from medix.models import AuditEvent

__all__ = ["Actor", "Audit", "AuditTrail", "Events", "Forwarder", "StudyRef", "build_audit"]

SYSLOG, HUB = "syslog", "hub"


class Audit:
    def __init__(self, trail: AuditTrail, clock: Clock) -> None:
        self.trail = trail
        self.events = trail.events
        self.clock = clock
        self.forwarders: list[Forwarder] = []

    def record(self, event: AuditEvent) -> None:
        self.trail.record(event)

    def now(self) -> float:
        return self.clock.time()

    def start(self) -> None:
        for forwarder in self.forwarders:
            forwarder.start()

    def stop(self) -> None:
        for forwarder in self.forwarders:
            forwarder.stop()

    def close(self) -> None:
        self.stop()
        self.trail.close()


class HubSink(Protocol):
    """What the hub forwarder needs of the hub client (afra.uplink.client.HubClient)."""

    def post_audit(self, events: Sequence[AuditEvent]) -> int: ...


def build_audit(
    settings: AuditSettings,
    root: Path,
    *,
    clock: Clock,
    source: str | Callable[[], str],
    hub: HubSink | None,
) -> Audit:
    destinations = ((SYSLOG,) if settings.syslog_host else ()) + ((HUB,) if settings.to_hub else ())
    trail = AuditTrail(
        DataDir(root).audit_trail,
        clock=clock,
        events=Events(source),
        keep=settings.keep_records,
        destinations=destinations,
    )
    audit = Audit(trail, clock)
    if settings.syslog_host:
        link = SyslogTls(
            settings.syslog_host,
            settings.syslog_port,
            ca_file=settings.syslog_ca_file,
            cert_file=settings.syslog_cert_file,
            key_file=settings.syslog_key_file,
            hostname=socket.gethostname(),
        )
        audit.forwarders.append(Forwarder(trail, SYSLOG, link.send, clock=clock, close=link.close))
    if settings.to_hub and hub is not None:
        audit.forwarders.append(Forwarder(trail, HUB, hub.post_audit, clock=clock))
    return audit
