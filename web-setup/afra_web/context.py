"""What every blueprint of the web app shares: `Web` (the box, the wizard's state, the audit
log, the network adapter, the settings overlay, the clock), found on the running app with
`current()`, and how a web action becomes an audit record of the box's trail.

Kept apart from `afra_web/__init__.py` (which builds the app from the blueprints) so the
blueprints import this and the package's `__init__` imports them, never in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, g, request

from afra.app import Appliance
from afra.audit import Actor, Events, StudyRef
from afra.audit.events import NETWORK_CONFIGURATION, SECURITY_CONFIGURATION
from afra.clock import Clock
from afra.config import WebSettings
from afra_web import security
from afra_web.audit import AuditLog
from afra_web.network import NetworkAdapter
from afra_web.overlay import SettingsOverlay
from afra_web.state import WebState
from medix.models import AuditEvent

SETUP_NOT_FINISHED = "the setup wizard is not finished"


@dataclass
class Web:
    """Everything the blueprints use, kept on the app (`web_of(app)`)."""

    appliance: Appliance
    state: WebState
    audit: AuditLog
    network: NetworkAdapter
    overlay: SettingsOverlay
    settings: WebSettings
    clock: Clock
    _hosts: tuple[float, tuple[str, ...]] | None = None

    def now(self) -> float:
        return self.clock.time()

    def report_setup(self) -> None:
        """Tell the health model whether setup is finished: an unfinished box is
        "unclaimed", which its front panel shows with its own pattern."""
        finished = self.state.setup_finished
        self.appliance.health.set("unclaimed", not finished, SETUP_NOT_FINISHED, source="wizard")

    def addresses(self) -> tuple[str, ...]:
        """The box's own addresses and mDNS name, read at most every 30 s (DHCP changes them)."""
        now = self.clock.monotonic()
        if self._hosts is not None and now - self._hosts[0] < 30:
            return self._hosts[1]
        try:
            info = self.network.read()
            found: tuple[str, ...] = (info.address, *info.addresses)
        except Exception:
            found = ()
        # The name mDNS advertises (afra-<short id>.local), once the box has started.
        advert = getattr(getattr(self.appliance, "mdns", None), "advert", None)
        host = getattr(advert, "host", None)
        if isinstance(host, str):
            found = (*found, host.rstrip("."))
        self._hosts = (now, found)
        return found

    def record(self, action: str, **fields: Any) -> None:
        op: security.Operator | None = g.get("operator")
        actor = fields.pop("actor", None) or (op.name if op else "")
        address = request.remote_addr or ""
        self.audit.add(self.now(), actor, address, action, **fields)
        trail = getattr(self.appliance, "audit", None)
        if trail is not None:
            event = box_audit_event(trail.events, self.now(), actor, address, action, fields)
            if event is not None:
                trail.record(event)


def web_of(app: Flask) -> Web:
    web: Web = app.extensions["afra_web"]
    return web


def current() -> Web:
    from flask import current_app

    return web_of(current_app)


_AUTH_OK = {"claim", "signed in"}
_AUTH_FAILED = {"claim refused", "sign-in refused", "setup reopen refused", "password refused"}
_SECURITY = {"password set", "password changed", "setup reopened"}
_SETTINGS = {"DICOM settings changed", "enrolled", "enrolment failed", "setup finished"}
_LOG_USED = {"audit log exported", "diagnostics downloaded"}


def box_audit_event(
    events: Events, when: float, actor: str, address: str, action: str, fields: dict[str, Any]
) -> AuditEvent | None:
    who = Actor(actor or "(not signed in)", address=address)
    detail = str(fields.get("detail", ""))
    if action in _AUTH_OK or action in _AUTH_FAILED or action == "signed out":
        failed = action in _AUTH_FAILED
        return events.authentication(
            when, who, login=action != "signed out", outcome=4 if failed else 0, why=detail
        )
    study = StudyRef(
        str(fields.get("study_uid", "")), patient_name=str(fields.get("patient_name", ""))
    )
    code_tail = str(fields.get("code", ""))[-4:]
    if action == "code revealed":
        return events.code(when, who, study, action="R", code_tail=code_tail)
    if action == "slip printed":
        return events.exported(
            when, Actor("the reception desk's printer"), study, what="patient slip", requestor=who
        )
    if action in _SECURITY:
        return events.configuration(when, who, action, kind=SECURITY_CONFIGURATION)
    if action == "network changed":
        return events.configuration(when, who, f"{action}: {detail}", kind=NETWORK_CONFIGURATION)
    if action in _SETTINGS:
        return events.configuration(when, who, f"{action}: {detail}".strip(": "))
    if action in _LOG_USED:
        return events.log_used(when, who, action)
    return None
