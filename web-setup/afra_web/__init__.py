"""AFRA's setup wizard and dashboard: `create_app(appliance, *, network=None, clock=None)`.

One Flask app per running box, with one blueprint per concern: `claim` (claiming, signing in
and out, language), `wizard` (the setup steps) and `dashboard` (health, queue, studies, audit,
settings). Seams are keyword arguments: the network adapter and the clock; the box itself is
the appliance built by `afra.app.build_appliance`. `server.WebServer` serves it with cheroot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from afra.app import Appliance
from afra.audit import Actor, Events, StudyRef
from afra.audit.events import NETWORK_CONFIGURATION, SECURITY_CONFIGURATION
from afra.clock import Clock
from afra.config import WebSettings
from afra_web import i18n, security
from afra_web.audit import AuditLog
from afra_web.network import EmulatedNetwork, NetworkAdapter, SystemNetwork
from afra_web.overlay import SettingsOverlay
from afra_web.state import WebState, web_dir
from medix.models import AuditEvent

__all__ = ["Web", "create_app", "web_of"]

LOG = logging.getLogger("afra.web")
SETUP_NOT_FINISHED = "the setup wizard is not finished"

# Reachable without signing in: before the claim nothing else is.
PUBLIC_ENDPOINTS = frozenset(
    {
        "static",
        "claim.root",
        "claim.claim",
        "claim.login",
        "claim.lang",
        "claim.logout",
        "claim.window",
    }
)


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
        """Tell the health model (issue 5) whether setup is finished: an unfinished box is
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
        # The name mDNS advertises (issue 5: afra-<short id>.local), once the box has started.
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


def create_app(
    appliance: Appliance,
    *,
    network: NetworkAdapter | None = None,
    clock: Clock | None = None,
) -> Flask:
    config = appliance.config
    settings = config.web
    data_dir = appliance.spool.root
    clock = clock or appliance.clock
    if network is None:
        network = (
            EmulatedNetwork(web_dir(data_dir) / "network.json")
            if settings.network == "emulated"
            else SystemNetwork()
        )
    state = WebState(data_dir, clock)
    web = Web(
        appliance=appliance,
        state=state,
        audit=AuditLog(
            web_dir(data_dir) / "audit.sqlite",
            clock=clock,
            # A full disk must not keep the page from starting: it shows the problem instead.
            on_problem=lambda problem: appliance.health.set(
                "storage_unwritable", bool(problem), problem, source="audit"
            ),
        ),
        network=network,
        overlay=SettingsOverlay(data_dir),
        settings=settings,
        clock=clock,
    )
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=state.secret_key(),
        SESSION_COOKIE_NAME="afra_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=256 * 1024,  # forms and a CA certificate; nothing bigger
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions["afra_web"] = web
    web.report_setup()

    from afra_web.claim import bp as claim_bp
    from afra_web.dashboard import bp as dashboard_bp
    from afra_web.wizard import bp as wizard_bp

    app.register_blueprint(claim_bp)
    app.register_blueprint(wizard_bp)
    app.register_blueprint(dashboard_bp)

    @app.before_request
    def guard() -> Any:
        allowed = security.allowed_hosts(settings.hostnames, web.addresses())
        if not security.host_allowed(request.host, allowed):
            return BaseResponse(
                "This box answers only to its own name or address.\n",
                421,
                mimetype="text/plain",
            )
        progress = state.progress()
        g.progress = progress
        g.operator = security.current_operator(
            web.now(),
            settings.session_idle_minutes * 60.0,
            progress.epoch,
            state.sessions,
            touch=not request.path.startswith("/api/"),
        )
        if request.endpoint == "dashboard.upload_update" and g.operator is not None:
            # A system update is the one large upload, and only from a signed-in operator:
            # the limit is raised before the CSRF check parses the form.
            request.max_content_length = web.appliance.config.update.max_bundle_mb * 2**20
        security.check_csrf()
        if request.endpoint in PUBLIC_ENDPOINTS or g.operator is not None:
            return None
        if request.path.startswith("/api/"):
            return jsonify(error="sign in first"), 401
        return redirect(url_for("claim.login" if state.has_password else "claim.claim"))

    @app.after_request
    def headers(response: BaseResponse) -> BaseResponse:
        return security.security_headers(response)  # type: ignore[arg-type]

    @app.context_processor
    def template_globals() -> dict[str, Any]:
        lang = i18n.language()
        return {
            "_": i18n.translate,
            "lang": lang,
            "dir": "rtl" if lang == "fa" else "ltr",
            "csrf_token": security.csrf_token,
            "operator": g.get("operator"),
            "progress": g.get("progress"),
            "box_name": web.appliance.config.box.name,
            "fmt_age": i18n.fmt_age,
            "fmt_bytes": i18n.fmt_bytes,
            "fmt_time": i18n.fmt_time,
            "fmt_date": i18n.fmt_date,
            "take_notices": i18n.take_notices,
            "now": web.now(),
        }

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code == 400 and exc.description == "csrf":
            message = i18n.translate(
                "This form has expired or did not come from this box. "
                "Reload the page and try again."
            )
        else:
            message = f"{exc.code} {exc.name}"
        if request.path.startswith("/api/"):
            return jsonify(error=message), exc.code
        return render_template("error.html", message=message), exc.code

    return app


# What the web app records, as the box's audit trail names it (afra.audit: DICOM audit
# messages). The dashboard's own log above keeps every action in words; the trail keeps those
# an auditor asks about. Updates are recorded by the update record itself, PACS echoes not.
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
