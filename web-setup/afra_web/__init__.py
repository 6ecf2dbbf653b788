"""AFRA's setup wizard and dashboard: `create_app(appliance, *, network=None, clock=None)`.

One Flask app per running box, with one blueprint per concern: `claim` (claiming, signing in
and out, language), `wizard` (the setup steps) and `dashboard` (health, queue, studies, audit,
settings). Seams are keyword arguments: the network adapter and the clock; the box itself is
the appliance built by `afra.app.build_appliance`. `server.WebServer` serves it with cheroot.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from afra.app import Appliance
from afra.clock import Clock
from afra_web import i18n, security
from afra_web.audit import AuditLog
from afra_web.context import Web, current, web_of
from afra_web.network import EmulatedNetwork, NetworkAdapter, SystemNetwork
from afra_web.overlay import SettingsOverlay
from afra_web.state import WebState, web_dir

__all__ = ["Web", "create_app", "current", "web_of"]

LOG = logging.getLogger("afra.web")

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
            **i18n.template_helpers(),  # _, ngettext, fmt_number, fmt_time, person_name, ...
            "lang": lang,
            "dir": "rtl" if lang == "fa" else "ltr",
            "csrf_token": security.csrf_token,
            "operator": g.get("operator"),
            "progress": g.get("progress"),
            "box_name": web.appliance.config.box.name,
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
