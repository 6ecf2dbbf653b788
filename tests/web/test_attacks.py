"""Attacks on the setup page and dashboard, one case each (`pytest -k <id>`).

Each case is what an attacker on the center's LAN would try and what they would see: every
route without a session, forms without or with a wrong CSRF token, a foreign Host header, a
copied cookie replayed after sign-out, a password change and a factory reset, a forged
cookie, oversized bodies, path traversal on /static, and guessing the setup code or password
(in parallel, from another address, across a restart, behind a forged X-Forwarded-For).
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from afra.app import Appliance
from afra.panel.reset import factory_reset
from afra.wsgi import WsgiServer
from afra_web import PUBLIC_ENDPOINTS, web_of
from afra_web.security import CSRF_FIELD
from afra_web.state import STEPS, Lockout
from tests.fakes import FakeClock
from tests.web.conftest import (
    PASSWORD,
    AppFactory,
    claim,
    error_for,
    finish_setup,
    post,
    set_password,
    text,
    token,
)
from tests.web.test_claim import wrong_code

pytestmark = pytest.mark.attack  # each case an attack on the wizard and dashboard

COOKIE = "afra_session"
ATTACKER = "192.0.2.66"
OWNER = "192.0.2.20"


@dataclass
class Box:
    """A real appliance (not started) and its web app, as the cases need them."""

    app: Flask
    appliance: Appliance
    setup_code: str
    clock: FakeClock
    make_app: AppFactory
    data_dir: Path

    def device(self, address: str = OWNER, app: Flask | None = None) -> FlaskClient:
        """A phone or laptop at `address` with its own cookies."""
        client = (app or self.app).test_client()
        client.environ_base["REMOTE_ADDR"] = address
        return client

    def technician(self) -> FlaskClient:
        """The technician's device, with setup finished and signed in."""
        client = self.device()
        finish_setup(client, self.setup_code)
        return client

    def checked_guesses(self, action: str) -> int:
        """Wrong guesses the box actually checked: each one is in the audit log."""
        return sum(1 for e in web_of(self.app).audit.entries(1000) if e.action == action)


def copied_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def replay(box: Box, cookie: str, address: str = ATTACKER) -> FlaskClient:
    """Another device presenting a copy of someone's cookie."""
    thief = box.device(address)
    thief.set_cookie(COOKIE, cookie)
    return thief


def routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) of every route, with sample values for its variables."""
    found = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<int:\w+>", "1", rule.rule).replace("<path:filename>", "app.css")
        paths = [path.replace("<name>", step) for step in STEPS] if "<name>" in path else [path]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.extend((rule.endpoint, method, p) for p in paths)
    return found


Attack = Callable[[Box], None]
ATTACKS: dict[str, Attack] = {}


def attack(name: str) -> Callable[[Attack], Attack]:
    def register(fn: Attack) -> Attack:
        ATTACKS[name] = fn
        return fn

    return register


# -- no session, CSRF, Host ---------------------------------------------------------------------


@attack("every-route-without-a-session")
def _no_session(box: Box) -> None:
    box.technician()  # a finished box: the routes that matter exist and hold data
    stranger = box.device(ATTACKER)
    checked = 0
    for endpoint, method, path in routes(box.app):
        if endpoint in PUBLIC_ENDPOINTS:
            continue
        if method == "GET":
            response = stranger.get(path)
        else:
            form = {"password": PASSWORD, "current": PASSWORD, "reopen_password": PASSWORD}
            response = post(stranger, path, form)
        checked += 1
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path)
            assert response.get_json() == {"error": "sign in first"}
        else:
            assert response.status_code == 302, (method, path)
            assert response.location.endswith("/login"), (method, path)
    assert checked >= 21
    # What is public is only what must be: claiming, signing in and out, language, assets.
    public = {e for e, _m, _p in routes(box.app) if e in PUBLIC_ENDPOINTS}
    assert public == PUBLIC_ENDPOINTS


@attack("post-without-csrf-token")
def _csrf_missing(box: Box) -> None:
    tech = box.technician()
    for _endpoint, method, path in routes(box.app):
        if method == "POST":
            assert tech.post(path, data={}).status_code == 400, path
    # Signing out is a POST too: without the token the session stays.
    refused = tech.post("/logout", data={})
    assert "This form has expired or did not come from this box" in text(refused)
    assert tech.get("/dashboard").status_code == 200


@attack("post-with-wrong-csrf-token")
def _csrf_wrong(box: Box) -> None:
    tech = box.technician()
    new = "Stolen-Passw0rd-99"
    forged = {"current": PASSWORD, "password": new, "confirm": new, CSRF_FIELD: "x" * 43}
    assert tech.post("/settings/password", data=forged).status_code == 400
    other = box.device()
    assert post(other, "/login", {"name": "Sara", "password": PASSWORD}).status_code == 302


@attack("csrf-token-of-another-session")
def _csrf_other_session(box: Box) -> None:
    tech = box.technician()
    attacker = box.device(ATTACKER)
    page = attacker.get("/login").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    response = tech.post(
        "/settings/reopen", data={"reopen_password": PASSWORD, CSRF_FIELD: found[1]}
    )
    assert response.status_code == 400
    assert tech.get("/dashboard").status_code == 200  # the wizard was not reopened


@attack("foreign-host-header-with-a-session")
def _foreign_host(box: Box) -> None:
    tech = box.technician()
    for path in ("/dashboard", "/api/status", "/audit.csv", "/diagnostics"):
        response = tech.get(path, headers={"Host": "rebind.evil.example"})
        assert response.status_code == 421, path
        assert b"Dashboard" not in response.data and b"operator" not in response.data


# -- sessions -----------------------------------------------------------------------------------


@attack("cookie-replayed-after-sign-out")
def _replay_after_sign_out(box: Box) -> None:
    tech = box.technician()
    cookie = copied_cookie(tech)
    assert replay(box, cookie).get("/dashboard").status_code == 200  # the copy works, at first
    assert post(tech, "/logout").status_code == 302
    thief = replay(box, cookie)
    response = thief.get("/dashboard")
    assert response.status_code == 302 and response.location.endswith("/login")
    assert thief.get("/api/status").status_code == 401
    assert replay(box, cookie).get("/audit.csv").location.endswith("/login")


@attack("cookie-replayed-after-password-change")
def _replay_after_password_change(box: Box) -> None:
    tech = box.technician()
    cookie = copied_cookie(tech)
    new = "Brand-New-Passw0rd"
    changed = post(
        tech, "/settings/password", {"current": PASSWORD, "password": new, "confirm": new}
    )
    assert changed.location.endswith("/settings")
    assert tech.get("/dashboard").status_code == 200  # the one who changed it stays in
    assert replay(box, cookie).get("/dashboard").location.endswith("/login")


@attack("cookie-replayed-after-factory-reset")
def _replay_after_factory_reset(box: Box) -> None:
    # A cookie copied while the box was being claimed, and one from the finished dashboard.
    tech = box.device()
    assert claim(tech, box.setup_code).status_code == 302
    claimed = copied_cookie(tech)
    assert set_password(tech).status_code == 302
    signed_in = copied_cookie(tech)
    factory_reset(box.data_dir)
    for cookie in (claimed, signed_in):
        thief = replay(box, cookie)
        response = thief.get("/setup/password")
        assert response.status_code == 302 and response.location.endswith("/claim")
        assert thief.get("/api/status").status_code == 401
    # The box is claimed again with the label's code, as after any reset.
    assert claim(box.device(), box.setup_code).status_code == 302


@attack("cookie-signed-with-another-key")
def _forged_cookie(box: Box) -> None:
    box.technician()
    epoch = web_of(box.app).state.progress().epoch
    now = box.clock.time()
    op = {"name": "Eve", "by": "password", "at": now, "seen": now, "epoch": epoch, "sid": "x"}
    other = Flask("forger")
    other.secret_key = "not the box's key"
    serializer = other.session_interface.get_signing_serializer(other)  # type: ignore[attr-defined]
    assert serializer is not None
    thief = replay(box, serializer.dumps({"op": op, CSRF_FIELD: "t"}))
    assert thief.get("/dashboard").location.endswith("/login")


# -- bodies and paths ---------------------------------------------------------------------------


@attack("oversized-form")
def _oversized_form(box: Box) -> None:
    box.technician()
    stranger = box.device(ATTACKER)
    response = post(stranger, "/login", {"name": "x" * (300 * 1024), "password": "y"})
    assert response.status_code == 413
    assert "413 Request Entity Too Large" in text(response)


@attack("oversized-upload-without-a-session")
def _oversized_upload(box: Box) -> None:
    box.technician()
    stranger = box.device(ATTACKER)
    token(stranger)
    with stranger.session_transaction() as session:
        csrf = session[CSRF_FIELD]
    # 2 MiB of "update": the update page's raised limit is for a signed-in operator only.
    body = (
        (
            f'--b\r\nContent-Disposition: form-data; name="{CSRF_FIELD}"\r\n\r\n{csrf}\r\n'
            '--b\r\nContent-Disposition: form-data; name="bundle"; filename="update.raucb"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"\0" * (2 * 2**20)
        + b"\r\n--b--\r\n"
    )
    response = stranger.post(
        "/settings/update", data=body, content_type="multipart/form-data; boundary=b"
    )
    assert response.status_code == 413
    assert "413 Request Entity Too Large" in text(response)


TRAVERSALS = (
    "/static/../state.py",
    "/static/..%2fstate.py",
    "/static/%2e%2e/state.py",
    "/static/%2e%2e%2f%2e%2e%2fweb%2fsecret.key",
    "/static/..%5cstate.py",
    "/static/app.css/../../state.py",
    "/static/%252e%252e/state.py",
    "/static/app.css%00.py",
    "/static//etc/passwd",
)


@attack("path-traversal-on-static")
def _traversal(box: Box) -> None:
    box.technician()
    stranger = box.device(ATTACKER)
    for path in TRAVERSALS:
        response = stranger.get(path)
        # Not found, or (a path no route matches, such as //) sent to sign in: never a file.
        assert response.status_code in (302, 404), path
        if response.status_code == 302:
            assert response.location.endswith("/login"), path
        body = response.get_data(as_text=True)
        assert "import " not in body and "root:" not in body, path
    with stranger.get("/static/app.css") as asset:
        assert asset.status_code == 200  # the assets themselves are served


@attack("path-traversal-on-static-over-the-wire")
def _traversal_served(box: Box) -> None:
    """The same paths sent as raw bytes to the served app (a browser would normalise them)."""
    with served(box.app) as port:
        for path in (*TRAVERSALS, "/static/../../afra_web/state.py", "/../web/secret.key"):
            status, body = raw_get(port, path)
            assert status in (302, 400, 404), (path, status)
            assert "import " not in body and "root:" not in body, path


# -- guessing -----------------------------------------------------------------------------------


@attack("parallel-setup-code-guesses")
def _parallel_code(box: Box) -> None:
    devices = [box.device(ATTACKER) for _ in range(24)]
    forms = [
        {"name": "Eve", "code": wrong_code(box.setup_code), "action": "code", CSRF_FIELD: token(d)}
        for d in devices
    ]
    responses = in_parallel(
        [(lambda d=d, f=f: d.post("/claim", data=f)) for d, f in zip(devices, forms, strict=True)]
    )
    assert [r.status_code for r in responses] == [400] * len(devices)
    assert box.checked_guesses("claim refused") <= Lockout.FREE_TRIES
    told = [error_for(r, "code") for r in responses]
    assert sum("Too many wrong attempts" in t for t in told) >= len(devices) - Lockout.FREE_TRIES
    # The right code from that address waits too; the technician's phone is not locked.
    assert "Too many wrong attempts" in error_for(
        claim(box.device(ATTACKER), box.setup_code), "code"
    )
    assert claim(box.device(OWNER), box.setup_code).status_code == 302


@attack("parallel-password-guesses")
def _parallel_password(box: Box) -> None:
    box.technician()
    devices = [box.device(ATTACKER) for _ in range(16)]
    forms = [
        {"name": "Eve", "password": f"guess-{i}", CSRF_FIELD: token(d)}
        for i, d in enumerate(devices)
    ]
    in_parallel(
        [(lambda d=d, f=f: d.post("/login", data=f)) for d, f in zip(devices, forms, strict=True)]
    )
    assert box.checked_guesses("sign-in refused") <= Lockout.FREE_TRIES


@attack("one-address-guessing-does-not-lock-the-owner-out")
def _other_address(box: Box) -> None:
    box.technician()
    attacker = box.device(ATTACKER)
    for i in range(Lockout.FREE_TRIES + 3):
        post(attacker, "/login", {"name": "Eve", "password": f"guess-{i}"})
    locked = post(attacker, "/login", {"name": "Eve", "password": PASSWORD})
    assert "Too many wrong attempts" in error_for(locked, "password")  # even the right one
    owner = box.device(OWNER)
    assert post(owner, "/login", {"name": "Sara", "password": PASSWORD}).status_code == 302
    assert owner.get("/dashboard").status_code == 200


@attack("the-lock-survives-a-restart")
def _restart(box: Box) -> None:
    attacker = box.device(ATTACKER)
    for _ in range(Lockout.FREE_TRIES):
        claim(attacker, wrong_code(box.setup_code))
    restarted = box.make_app(box.appliance)
    again = box.device(ATTACKER, app=restarted)
    refused = claim(again, box.setup_code)
    assert "Too many wrong attempts. Try again in 1 min" in error_for(refused, "code")
    # ... for that client only: the technician claims from their own phone.
    assert claim(box.device(OWNER, app=restarted), box.setup_code).status_code == 302


@attack("forged-x-forwarded-for-gives-no-fresh-tries")
def _forwarded_for(box: Box) -> None:
    attacker = box.device(ATTACKER)
    for i in range(Lockout.FREE_TRIES + 2):
        form = {"name": "Eve", "code": wrong_code(box.setup_code), "action": "code"}
        post(attacker, "/claim", form, headers={"X-Forwarded-For": f"198.51.100.{i}"})
    assert box.checked_guesses("claim refused") == Lockout.FREE_TRIES


@attack("ipv6-privacy-addresses-share-one-count")
def _ipv6(box: Box) -> None:
    for i in range(Lockout.FREE_TRIES + 2):
        claim(box.device(f"2001:db8:1:2::{i + 1:x}"), wrong_code(box.setup_code))
    assert box.checked_guesses("claim refused") == Lockout.FREE_TRIES
    assert claim(box.device("2001:db8:1:3::1"), box.setup_code).status_code == 302


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack(
    name: str,
    app: Flask,
    appliance: Appliance,
    setup_code: str,
    clock: FakeClock,
    make_app: AppFactory,
    data_dir: Path,
) -> None:
    ATTACKS[name](Box(app, appliance, setup_code, clock, make_app, data_dir))


# -- the served app, over real sockets ----------------------------------------------------------


@contextmanager
def served(app: Flask) -> Iterator[int]:
    """The app served by cheroot as on a box (8 threads) on a free loopback port."""
    server = WsgiServer(app, bind="127.0.0.1", port=0, name="afra-web-test")
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def raw_get(port: int, path: str) -> tuple[int, str]:
    """GET with the path exactly as given (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"127.0.0.1:{port}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def in_parallel(calls: list[Callable[[], TestResponse]]) -> list[TestResponse]:
    """Run the calls at once (released together by a barrier); their results in order."""
    results: list[TestResponse | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), "a guess did not finish"
    return [r for r in results if r is not None]
