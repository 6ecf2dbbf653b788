"""Attacks: no claim means no page; wrong Host; forms without CSRF tokens; headers; offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import afra_web
from afra.app import build_appliance
from afra_web.security import CSRF_FIELD
from afra_web.state import STEPS
from tests.conftest import make_config
from tests.fakes import FakeClock
from tests.web.conftest import BOX_IP, AppFactory, claim, finish_setup, post, text

PUBLIC = {"/", "/claim", "/login", "/lang", "/logout", "/api/setup-window"}


def routes(app: Flask) -> list[tuple[str, str]]:
    """(method, path) of every route, with sample values for its variables."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<int:\w+>", "1", rule.rule)
        paths = [path.replace("<name>", step) for step in STEPS] if "<name>" in path else [path]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.extend((method, p) for p in paths)
    return found


def test_before_the_claim_every_page_refuses(app: Flask, client: FlaskClient) -> None:
    checked = 0
    for method, path in routes(app):
        if path in PUBLIC:
            continue
        if method == "GET":
            response = client.get(path)
        else:
            response = post(client, path, {"password": "x", "reopen_password": "x"})
        checked += 1
        if path.startswith("/api/"):
            assert response.status_code == 401, path
            assert response.get_json() == {"error": "sign in first"}
        else:
            assert response.status_code == 302, (method, path)
            assert response.location.endswith("/claim"), (method, path)
    assert checked >= 21
    assert "Set up this box" in text(client.get("/claim"))


def test_an_expired_session_refuses_like_no_session(
    client: FlaskClient, setup_code: str, clock: object
) -> None:
    claim(client, setup_code)
    clock.advance(3600)  # type: ignore[attr-defined]
    assert client.get("/api/status").status_code == 401


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "192.0.2.99", "afra-test.evil.example", "[::2]:8080"],
)
def test_only_the_boxs_own_names_are_served(client: FlaskClient, host: str) -> None:
    for path in ("/", "/claim", "/api/setup-window", "/static/app.css"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 421, (host, path)
        assert b"Set up" not in response.data


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1:8080", "[::1]:8080", BOX_IP, f"{BOX_IP}:8080"],
)
def test_the_boxs_names_and_addresses_are_served(client: FlaskClient, host: str) -> None:
    assert client.get("/claim", headers={"Host": host}).status_code == 200


def test_the_hostname_and_configured_names_are_served(
    client: FlaskClient, make_app: AppFactory, tmp_path: Path, clock: FakeClock
) -> None:
    import socket

    name = socket.gethostname()
    assert client.get("/claim", headers={"Host": f"{name}.local"}).status_code == 200
    assert client.get("/claim", headers={"Host": name.upper()}).status_code == 200
    config = make_config(tmp_path / "named", web={"hostnames": ["afra.radiology.lan"]})
    box = build_appliance(config, clock=clock)
    try:
        named = make_app(box).test_client()
        assert named.get("/claim", headers={"Host": "afra.radiology.lan"}).status_code == 200
        assert named.get("/claim", headers={"Host": "radiology.lan"}).status_code == 421
    finally:
        box.close()


def test_forms_without_the_csrf_token_are_refused(client: FlaskClient, setup_code: str) -> None:
    client.get("/claim")
    missing = client.post("/claim", data={"name": "x", "code": setup_code})
    assert missing.status_code == 400
    assert "This form has expired or did not come from this box" in text(missing)
    forged = client.post("/claim", data={"name": "x", "code": setup_code, CSRF_FIELD: "guess"})
    assert forged.status_code == 400
    assert client.get("/setup/password").location.endswith("/claim")  # nothing was claimed


def test_a_token_from_another_session_is_refused(app: Flask, setup_code: str) -> None:
    victim, attacker = app.test_client(), app.test_client()
    finish_token = _token_of(attacker)
    response = victim.post(
        "/claim", data={"name": "x", "code": setup_code, CSRF_FIELD: finish_token}
    )
    assert response.status_code == 400


def _token_of(client: FlaskClient) -> str:
    page = client.get("/claim").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_every_state_changing_route_checks_csrf(
    app: Flask, client: FlaskClient, setup_code: str
) -> None:
    finish_setup(client, setup_code)
    for method, path in routes(app):
        if method != "POST":
            continue
        response = client.post(path, data={})
        assert response.status_code == 400, path


def test_security_headers(client: FlaskClient) -> None:
    response = client.get("/claim")
    h = response.headers
    csp = h["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Cache-Control"] == "no-store"
    cookie = h["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_the_pages_load_nothing_from_elsewhere_and_nothing_inline(
    client: FlaskClient, setup_code: str
) -> None:
    finish_setup(client, setup_code)
    pages = ["/dashboard", "/audit", "/settings"]
    for path in pages:
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', html), path
        assert "<style" not in html and " style=" not in html, path
        assert "<script>" not in html and " on" + "click=" not in html, path
    static = Path(afra_web.__file__).parent / "static"
    for asset in static.iterdir():
        body = asset.read_text(encoding="utf-8")
        assert "http://" not in body and "https://" not in body, asset
        assert "@import" not in body and "url(" not in body, asset
