"""Sending the trail on: to an audit repository as syslog over TLS, and to the hub.

The repository gets what IHE ATNA asks of a secure node: each record as a DICOM audit message
(XML, PS3.15 A.5.1) in an RFC 5424 syslog message (facility 10, security/authorization; MSGID
"IHE+RFC-3881"; the XML after a UTF-8 BOM) over TLS with RFC 5425's octet-counting framing, the
repository's certificate checked against `audit.syslog_ca_file` and the box's own presented
when one is configured. A written record counts as sent: syslog over TLS has no receipt. A
connection the repository closed (a restart) is noticed before the next write and opened
again; what the repository loses after it read a record is beyond the box (the hub, the
other destination, answers with the sequence number it holds).

Python's SysLogHandler speaks RFC 3164 over UDP or TCP without TLS, and the RFC 5424 handlers
on PyPI are logging handlers that drop what they cannot send; the trail needs a cursor it
advances only once a record is written, so the twenty lines of framing are our own.

Each destination has a forwarder thread: it sends the records after its cursor in batches,
advances the cursor, waits for new records, and backs off (the node's policy, `afra.retry`:
capped, doubling) when the destination is away. Records wait in the trail meanwhile.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

from afra.audit.trail import AuditTrail
from afra.clock import Clock
from afra.retry import Backoff
from medix.models import AuditCode, AuditEvent

LOG = logging.getLogger("afra.audit")

FACILITY_AUTH = 10  # security/authorization messages (RFC 5424 table 1)
SEVERITY = {0: 5, 4: 4, 8: 3, 12: 2}  # notice, warning, error, critical
BOM = b"\xef\xbb\xbf"


def _code(parent: ET.Element, tag: str, code: AuditCode) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def audit_message(event: AuditEvent) -> bytes:
    """The record as a DICOM audit message (the DICOM schema's element and attribute names)."""
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": event.at,
            "EventOutcomeIndicator": str(event.outcome),
        },
    )
    _code(ident, "EventID", event.event)
    for kind in event.types:
        _code(ident, "EventTypeCode", kind)
    if event.outcome_text:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.outcome_text
    for p in event.participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.name:
            attrs["AlternativeUserID"] = p.name
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = str(p.address_type)
        element = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(element, "RoleIDCode", p.role)
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": event.source})
    _code(source, "AuditSourceTypeCode", AuditCode(code="4", meaning="Application Server"))
    for o in event.objects:
        element = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": o.id,
                "ParticipantObjectTypeCode": str(o.type),
                "ParticipantObjectTypeCodeRole": str(o.role),
            },
        )
        _code(element, "ParticipantObjectIDTypeCode", o.id_type)
        if o.name:
            ET.SubElement(element, "ParticipantObjectName").text = o.name
        for key, value in o.details.items():
            ET.SubElement(element, "ParticipantObjectDetail", {"type": key, "value": value})
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def syslog_frame(event: AuditEvent, *, hostname: str, app: str = "afra") -> bytes:
    """One RFC 5424 message with RFC 5425's framing: `MSG-LEN SP SYSLOG-MSG`."""
    pri = FACILITY_AUTH * 8 + SEVERITY[event.outcome]
    host = hostname.encode("ascii", "replace")[:255] or b"-"
    header = b"<%d>1 %s %s %s - IHE+RFC-3881 - " % (pri, event.at.encode(), host, app.encode())
    message = header + BOM + audit_message(event)
    return b"%d %s" % (len(message), message)


class SyslogTls:
    """A connection to an audit repository (RFC 5425), opened when needed, kept open."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_file: Path | None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        hostname: str,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.hostname, self.timeout = host, port, hostname, timeout
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            self.context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        self._sock: ssl.SSLSocket | None = None

    def send(self, events: Sequence[AuditEvent]) -> int:
        data = b"".join(syslog_frame(e, hostname=self.hostname) for e in events)
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()  # the repository restarted: a write now would vanish unread
        try:
            if self._sock is None:
                raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
                try:
                    self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
                except BaseException:
                    raw.close()
                    raise
            self._sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.close()
            raise
        return events[-1].seq

    @staticmethod
    def _peer_closed(sock: ssl.SSLSocket) -> bool:
        """Whether the repository has closed the connection (it sends nothing otherwise)."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        # Readable is also a TLS 1.3 server's session tickets: look without waiting.
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return sock.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except (OSError, ssl.SSLError):
            return True
        finally:
            sock.settimeout(timeout)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class DestinationStuck(RuntimeError):
    """A destination answered without taking what it was sent."""


Sender = Callable[[Sequence[AuditEvent]], int]  # returns the last seq the destination holds


class Forwarder:
    """Sends the trail to one destination from its cursor on, on its own thread."""

    def __init__(
        self,
        trail: AuditTrail,
        name: str,
        send: Sender,
        *,
        clock: Clock,
        batch: int = 200,
        retry_base: float = 2.0,
        retry_cap: float = 300.0,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.trail, self.name, self.send, self.clock = trail, name, send, clock
        self.batch = batch
        self.backoff = Backoff(retry_base, retry_cap)
        self._close = close
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.last_error = ""

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"audit-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.trail.changed:
            self.trail.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self._close is not None:
            self._close()

    def step(self) -> int:
        """Send one batch; how many records went (0: nothing waiting). Raises when it failed,
        also when the destination took the batch but says it holds none of it (sending it
        again at once would only loop)."""
        cursor = self.trail.cursor(self.name)
        events = self.trail.after(cursor, self.batch)
        if not events:
            return 0
        through = self.send(events)
        if through < events[0].seq:
            raise DestinationStuck(
                f"{self.name} took records {events[0].seq}-{events[-1].seq} but holds only up "
                f"to {through}"
            )
        self.trail.sent(self.name, through)
        return len(events)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.step()
            except Exception as exc:  # the destination is away or refused: wait, try again
                self.failures += 1
                self.last_error = str(exc) or exc.__class__.__name__
                wait = self.backoff.delay(self.failures)
                if self.failures == 1 or self.failures % 10 == 0:
                    LOG.warning(
                        "audit records cannot reach %s (%s); kept here, next try in %.0f s",
                        self.name,
                        self.last_error,
                        wait,
                    )
                self.clock.sleep(wait, self._stop)
                continue
            if self.failures:
                LOG.info("audit records reach %s again", self.name)
                self.failures, self.last_error = 0, ""
            if sent == 0:
                with self.trail.changed:
                    # A record that came in since the step is not waited past.
                    cursor = self.trail.cursor(self.name, locked=True)
                    if not self._stop.is_set() and not self.trail.has_after(cursor, locked=True):
                        self.trail.changed.wait(timeout=30)
