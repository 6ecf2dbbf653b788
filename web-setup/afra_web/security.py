"""The web app's guards, run before every request: Host, session age, CSRF, who is signed in.

- Host: only loopback, the box's hostname (and `<hostname>.local`), its addresses and
  `web.hostnames` are served; any other name gets 421. A page on some site that re-points its
  DNS name at the box (DNS rebinding) therefore never reaches the app with its own name.
- CSRF: a random token per session, in every form (hidden field; a script may send the
  `X-CSRF-Token` header instead), compared in constant time on every state-changing method.
  Our own twenty lines rather than Flask-WTF: the app uses no WTForms, and the check is the
  same one Flask-WTF makes, with no extra dependency to keep up.
- Sessions: a signed cookie (HttpOnly, SameSite=Strict) holding the operator's name, when they
  signed in and were last seen, and the password epoch; idle too long, older than a day, or
  from before a password change, and it is dropped. Times come from the injected clock.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, g, request, session

SESSION_MAX_S = 12 * 3600.0
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)


@dataclass(frozen=True)
class Operator:
    """Who is signed in: the name they gave (for the audit log) and how they proved it."""

    name: str
    by: str  # "setup code", "button", "password"
    address: str


def _split_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def allowed_hosts(extra: tuple[str, ...], addresses: tuple[str, ...]) -> set[str]:
    name = socket.gethostname().lower()
    hosts = {"localhost", "127.0.0.1", "::1", name, f"{name}.local"}
    hosts.update(h.lower().rstrip(".") for h in extra)
    for address in addresses:
        hosts.add(address.split("/")[0].lower())
    return hosts


def host_allowed(host: str, allowed: set[str]) -> bool:
    name = _split_host(host)
    if name in allowed:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not hmac.compare_digest(expected, given):
        abort(400, description="csrf")


def sign_in(name: str, by: str, now: float, epoch: int) -> None:
    lang = session.get("lang")
    session.clear()  # a new session and a new CSRF token on every sign-in (no fixation)
    session["op"] = {"name": name, "by": by, "at": now, "seen": now, "epoch": epoch}
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    if lang:
        session["lang"] = lang


def sign_out() -> None:
    session.clear()


def current_operator(
    now: float, idle_s: float, epoch: int, *, touch: bool = True
) -> Operator | None:
    """The signed-in operator, or None (and the session dropped) when it has expired.

    `touch` restarts the idle time: a person's request does, a page's own status poll does
    not (a dashboard left open on a desk still signs out)."""
    op: Any = session.get("op")
    if not isinstance(op, dict):
        return None
    try:
        fresh = (
            now - float(op["seen"]) <= idle_s
            and now - float(op["at"]) <= SESSION_MAX_S
            and int(op["epoch"]) == epoch
        )
    except (KeyError, TypeError, ValueError):
        fresh = False
    if not fresh:
        session.pop("op", None)
        g.session_expired = True
        return None
    if touch and now - float(op["seen"]) > 30:  # a cookie rewrite at most every 30 s
        op["seen"] = now
        session["op"] = op
    return Operator(name=str(op["name"]), by=str(op["by"]), address=request.remote_addr or "")


def security_headers(response: Response) -> Response:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h["X-Frame-Options"] = "DENY"
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Cross-Origin-Resource-Policy"] = "same-origin"
    h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), interest-cohort=()"
    if request.endpoint != "static":
        h["Cache-Control"] = "no-store"
    return response
