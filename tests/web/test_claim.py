"""Claiming the box, signing in and out, the lockout, the language."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from afra.app import Appliance
from afra_web.state import Lockout
from tests.fakes import FakeClock
from tests.web.conftest import (
    PASSWORD,
    AppFactory,
    claim,
    error_for,
    post,
    set_password,
    text,
)


def test_the_claim_page_asks_for_the_label_code_or_the_button(client: FlaskClient) -> None:
    response = client.get("/", follow_redirects=True)
    assert response.status_code == 200
    page = text(response)
    assert "Set up this box" in page
    assert "Setup code" in page
    assert "Hold the button on the box" in page
    assert "password" not in page.lower()  # there is no default password to type


def test_the_right_code_claims_and_leads_to_the_password_step(
    client: FlaskClient, setup_code: str, appliance: Appliance
) -> None:
    response = claim(client, setup_code.lower().replace("-", " "))  # as people type it
    assert response.status_code == 302
    assert response.location.endswith("/setup/password")
    page = text(client.get("/setup/password"))
    assert "Admin password" in page
    claimed = [e for e in appliance_audit(client) if e.action == "claim"]
    assert claimed[0].actor == "Sara Technician" and "setup code" in claimed[0].detail


def appliance_audit(client: FlaskClient) -> list:  # type: ignore[type-arg]
    from afra_web import web_of

    return web_of(client.application).audit.entries()  # type: ignore[arg-type]


def test_a_name_is_required(client: FlaskClient, setup_code: str) -> None:
    response = claim(client, setup_code, name="  ")
    assert response.status_code == 400
    assert "Enter your name" in error_for(response, "name")


def test_a_mistyped_code_is_explained_and_not_counted(
    client: FlaskClient, app: Flask, data_dir: object, clock: FakeClock, setup_code: str
) -> None:
    for _ in range(8):
        response = claim(client, "ABCD-EFGH-JKM")  # one symbol short
        assert response.status_code == 400
        assert "This is not a setup code" in error_for(response, "code")
    assert claim(client, setup_code).status_code == 302  # no lockout from typos


def test_a_wrong_code_is_refused(client: FlaskClient, setup_code: str) -> None:
    response = claim(client, wrong_code(setup_code))  # well formed, not this box's
    assert response.status_code == 400
    assert error_for(response, "code") == "This setup code is wrong."


def wrong_code(setup_code: str) -> str:
    """A well-formed code (check symbol right) that is not the box's."""
    from afra.medis.codes import new_code

    while True:
        other = new_code()
        if other != setup_code.replace("-", ""):
            return other


def test_brute_forcing_the_setup_code_locks_out(
    client: FlaskClient,
    setup_code: str,
    clock: FakeClock,
    make_app: AppFactory,
    appliance: Appliance,
) -> None:
    for _ in range(Lockout.FREE_TRIES - 1):
        assert (
            error_for(claim(client, wrong_code(setup_code)), "code") == "This setup code is wrong."
        )
    locked = claim(client, wrong_code(setup_code))
    assert "Too many wrong attempts. Try again in 1 min" in error_for(locked, "code")
    # Even the right code is not heard while locked, and a reboot does not reset the count.
    rebooted = make_app(appliance).test_client()
    refused = claim(rebooted, setup_code)
    assert refused.status_code == 400
    assert "Too many wrong attempts" in error_for(refused, "code")
    clock.advance(61)
    # Each further wrong guess doubles the wait.
    assert "Try again in 2 min" in error_for(claim(rebooted, wrong_code(setup_code)), "code")
    clock.advance(121)
    assert claim(rebooted, setup_code).status_code == 302


def test_the_buttons_setup_window_claims_while_open(
    client: FlaskClient, appliance: Appliance
) -> None:
    closed = post(client, "/claim", {"name": "Ali", "action": "window"})
    assert closed.status_code == 400
    assert "The setup window is not open" in error_for(closed, "window")
    assert appliance.setup_window is not None
    appliance.setup_window.open(by="button")
    assert client.get("/api/setup-window").get_json()["setup_window"]["open"] is True
    assert "The setup window is open." in text(client.get("/claim"))
    opened = post(client, "/claim", {"name": "Ali", "action": "window"})
    assert opened.status_code == 302 and opened.location.endswith("/setup/password")


def test_without_a_setup_code_only_the_button_claims(client: FlaskClient, data_dir: object) -> None:
    from pathlib import Path

    (Path(str(data_dir)) / "web" / "setup-code.hash").unlink()
    page = client.get("/claim")
    assert "Setup code" not in text(page)
    response = post(client, "/claim", {"name": "Ali", "code": "x", "action": "code"})
    assert "Use the button on the box" in error_for(response, "code")


def test_after_the_password_the_box_asks_for_it(
    client: FlaskClient, app: Flask, setup_code: str
) -> None:
    claim(client, setup_code)
    set_password(client)
    other = app.test_client()
    assert other.get("/").location.endswith("/login")
    assert other.get("/claim").location.endswith("/login")  # the code no longer claims
    wrong = post(other, "/login", {"name": "Reza", "password": "not-it"})
    assert wrong.status_code == 400
    assert error_for(wrong, "password") == "This password is wrong."
    right = post(other, "/login", {"name": "Reza", "password": PASSWORD})
    assert right.status_code == 302
    assert right.location.endswith("/setup/network")  # the first step not done yet


def test_a_forgotten_password_is_replaced_with_the_button(
    client: FlaskClient, app: Flask, setup_code: str, appliance: Appliance
) -> None:
    claim(client, setup_code)
    set_password(client)
    other = app.test_client()
    assert "The setup window is not open" in error_for(
        post(other, "/login", {"name": "Reza", "action": "window"}), "window"
    )
    assert appliance.setup_window is not None
    appliance.setup_window.open()
    response = post(other, "/login", {"name": "Reza", "action": "window"})
    assert response.location.endswith("/setup/password")
    new = "Another-Good-Passw0rd"
    assert post(other, "/setup/password", {"password": new, "confirm": new}).status_code == 302
    # The first device's session ended with the old password.
    assert client.get("/setup/network").location.endswith("/login")


def test_sign_out(client: FlaskClient, setup_code: str) -> None:
    claim(client, setup_code)
    assert client.get("/setup/password").status_code == 200
    assert post(client, "/logout").status_code == 302
    assert client.get("/setup/password").location.endswith("/claim")


def test_sessions_expire_when_idle(client: FlaskClient, setup_code: str, clock: FakeClock) -> None:
    claim(client, setup_code)
    clock.advance(29 * 60)
    assert client.get("/setup/password").status_code == 200  # still in use: kept alive
    clock.advance(29 * 60)
    assert client.get("/setup/password").status_code == 200
    clock.advance(31 * 60)
    assert client.get("/setup/password").location.endswith("/claim")


def test_persian_pages_are_right_to_left(client: FlaskClient) -> None:
    response = post(client, "/lang", {"lang": "fa", "next": "/claim"})
    assert response.location.endswith("/claim")
    page = client.get("/claim").get_data(as_text=True)
    assert '<html lang="fa" dir="rtl">' in page
    assert "راه‌اندازی این دستگاه" in page
    assert post(client, "/lang", {"lang": "en", "next": "//evil.example/"}).location == "/"
    assert '<html lang="en" dir="ltr">' in client.get("/claim").get_data(as_text=True)


def test_a_persian_browser_gets_persian_first(client: FlaskClient) -> None:
    page = client.get("/claim", headers={"Accept-Language": "fa-IR,fa;q=0.9,en;q=0.5"})
    assert 'dir="rtl"' in page.get_data(as_text=True)


def test_a_dashboard_left_polling_still_signs_out(
    client: FlaskClient, setup_code: str, clock: FakeClock
) -> None:
    claim(client, setup_code)
    for _ in range(7):  # 35 minutes of status polls, no person
        clock.advance(5 * 60)
        client.get("/api/status")
    assert client.get("/api/status").status_code == 401
    assert client.get("/setup/password").location.endswith("/claim")
