"""The web app's guards, run before every request: Host, session age, CSRF, who is signed in.

- Host: only loopback, the box's hostname (and `<hostname>.local`), its addresses and
  `web.hostnames` are served; any other name gets 421. A page on some site that re-points its
  DNS name at the box (DNS rebinding) therefore never reaches the app with its own name.
- CSRF: a random token per session, in every form (hidden field; a script may send the
  `X-CSRF-Token` header instead), compared in constant time on every state-changing method.
  Our own twenty lines rather than Flask-WTF: the app uses no WTForms, and the check is the
  same one Flask-WTF makes, with no extra dependency to keep up.
- Sessions: a signed cookie (HttpOnly, SameSite=Strict) holding the operator's name, when they
  signed in and were last seen, the password epoch and a session id; idle too long, older than
  12 hours, from before a password change, or with an id the box no longer lists
  (`state.Sessions`: signed out, password changed, factory reset), and it is dropped. A signed
  cookie alone cannot be revoked: a copy would outlive the sign-out. Times come from the
  injected clock.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, g, request, session

from afra_web.state import SESSION_MAX_S, Sessions

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


def sign_in(name: str, by: str, now: float, epoch: int, sessions: Sessions) -> None:
    lang = session.get("lang")
    _end(sessions)  # signing in again replaces the session, on the box too
    session.clear()  # a new session and a new CSRF token on every sign-in (no fixation)
    session["op"] = {
        "name": name,
        "by": by,
        "at": now,
        "seen": now,
        "epoch": epoch,
        "sid": sessions.start(),
    }
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    if lang:
        session["lang"] = lang


def _end(sessions: Sessions) -> None:
    op: Any = session.get("op")
    if isinstance(op, dict) and isinstance(op.get("sid"), str):
        sessions.end(op["sid"])


def sign_out(sessions: Sessions) -> None:
    """End the session on the box (a copy of the cookie opens nothing) and in the browser."""
    _end(sessions)
    session.clear()


def current_operator(
    now: float, idle_s: float, epoch: int, sessions: Sessions, *, touch: bool = True
) -> Operator | None:
    """The signed-in operator, or None (and the session dropped) when it has expired or the
    box no longer lists it.

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
        listed = fresh and sessions.alive(str(op["sid"]))
    except (KeyError, TypeError, ValueError):
        fresh = listed = False
    if not listed:
        if not fresh:
            _end(sessions)  # expired here: no copy of the cookie lives on either
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
