"""Physicians at the reference hub: accounts (admin), sign-in with CSRF, sessions that end at
the hub, and an inbox that shows only the signed-in physician's own studies."""

from __future__ import annotations

import re
import sqlite3

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from medix.hub.physicians import SessionSettings, verify_password
from tests.medix.conftest import PASSWORD, HubClient, csrf_token, sign_in
from tests.medix.nodekit import MEDIS_CODE, make_study

pytestmark = pytest.mark.attack  # the inbox without, or with someone else's, credentials

OTHER_CODE = "22222222222A"
SHOWN_CODE = "K7QM-2XHP-9RTC"
OTHER_SHOWN = "2222-2222-222A"


def two_physicians(hc: HubClient) -> None:
    hc.upload(make_study())  # Rahimi^Ali's patient Sara Karimi, K7QM-2XHP-9RTC
    hc.upload(
        make_study(
            study_number=2,
            medis_code=OTHER_CODE,
            physician="Other^Doc",
            patient_name="Tehrani^Maryam",
        )
    )
    hc.add_physician("rahimi", "Rahimi^Ali")
    hc.add_physician("other", "OTHER^doc", "another long password")


def assert_no_patient_data(response: TestResponse) -> None:
    page = response.get_data(as_text=True)
    for secret in ("Karimi", "Sara", "Tehrani", SHOWN_CODE, MEDIS_CODE, OTHER_SHOWN, OTHER_CODE):
        assert secret not in page, secret
    assert "/download/" not in page


def session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("medix-session")
    assert cookie is not None
    return cookie.value


# -- the inbox needs the physician's session -------------------------------------------------


def test_inbox_without_a_session_gives_no_patient_data(hc: HubClient) -> None:
    two_physicians(hc)
    for path in ("/inbox", "/inbox/Rahimi^Ali", "/inbox/rahimi%5EALI", "/inbox/Other^Doc"):
        response = hc.client.get(path)
        assert response.status_code == 303, path
        assert_no_patient_data(response)
        followed = hc.client.get(path, follow_redirects=True)
        assert followed.status_code == 200 and 'name="password"' in followed.get_data(True)
        assert_no_patient_data(followed)
    # A cookie the hub never issued opens nothing either.
    for forged in ("x", "A" * 43, "\u00e9\u00e9", ""):
        hc.client.set_cookie("medix-session", forged)
        assert_no_patient_data(hc.client.get("/inbox", follow_redirects=True))


def test_physician_sees_only_their_own_studies(hc: HubClient) -> None:
    two_physicians(hc)
    a = hc.app.test_client()
    assert sign_in(a, "Rahimi").status_code == 303  # logins are case-insensitive
    page = a.get("/inbox").get_data(as_text=True)
    assert SHOWN_CODE in page and "Sara Karimi" in page and "/download/" in page
    assert OTHER_SHOWN not in page and "Tehrani" not in page
    # B's name in the URL is no way into B's inbox.
    for path in ("/inbox/Other^Doc", "/inbox/OTHER%5Edoc", "/inbox/../inbox/Other^Doc"):
        response = a.get(path, follow_redirects=True)
        body = response.get_data(as_text=True)
        assert OTHER_SHOWN not in body and "Tehrani" not in body, path
    b = hc.app.test_client()
    assert sign_in(b, "other", "another long password", "192.0.2.51").status_code == 303
    page_b = b.get("/inbox").get_data(as_text=True)
    assert OTHER_SHOWN in page_b and "Maryam Tehrani" in page_b
    assert SHOWN_CODE not in page_b and "Karimi" not in page_b


def test_inbox_download_links_work_for_the_signed_in_physician(hc: HubClient) -> None:
    two_physicians(hc)
    sign_in(hc.client)
    page = hc.client.get("/inbox").get_data(as_text=True)
    link = re.search(r'href="(/download/[^"]+)"', page)
    assert link
    archive = hc.client.get(link.group(1))
    assert archive.status_code == 200 and archive.data[:2] == b"PK"
    archive.close()


def test_sign_out_ends_the_session_at_the_hub(hc: HubClient) -> None:
    two_physicians(hc)
    sign_in(hc.client)
    old = session_cookie(hc.client)
    page = hc.client.get("/inbox").get_data(as_text=True)
    assert SHOWN_CODE in page
    # Signing out needs the page's token: another site's form cannot sign anyone out.
    refused = hc.client.post("/physician/sign-out", data={})
    assert refused.status_code == 400
    assert SHOWN_CODE in hc.client.get("/inbox").get_data(as_text=True)
    out = hc.client.post("/physician/sign-out", data={"csrf_token": csrf_token(page)})
    assert out.status_code == 303 and out.headers["Location"].endswith("/physician/sign-in")
    assert "medix-session=;" in out.headers["Set-Cookie"]
    # The old cookie, replayed from elsewhere, is worth nothing now.
    replay = hc.app.test_client()
    replay.set_cookie("medix-session", old)
    response = replay.get("/inbox")
    assert response.status_code == 303
    assert_no_patient_data(response)
    assert_no_patient_data(replay.get("/inbox", follow_redirects=True))
    assert hc.hub.store.session(old) is None


def test_sessions_end_when_idle_after_a_day_and_on_a_new_password(hc: HubClient) -> None:
    two_physicians(hc)
    settings = SessionSettings()
    sign_in(hc.client)
    hc.clock.advance(settings.idle_s - 1)
    assert SHOWN_CODE in hc.client.get("/inbox").get_data(as_text=True)  # still in use
    hc.clock.advance(settings.idle_s + 1)
    assert hc.client.get("/inbox").status_code == 303
    # However busy, a session lasts at most max_s.
    sign_in(hc.client)
    for _ in range(int(settings.max_s // (settings.idle_s / 2)) + 1):
        hc.clock.advance(settings.idle_s / 2)
        if hc.client.get("/inbox").status_code != 200:
            break
    else:
        pytest.fail("the session outlived max_s")
    # The admin's new password ends every session of the account.
    sign_in(hc.client)
    assert hc.client.get("/inbox").status_code == 200
    reset = hc.client.put(
        "/admin/physicians/rahimi/password",
        json={"password": "a brand new password"},
        headers=hc.admin_headers(),
    )
    assert reset.status_code == 200
    assert hc.client.get("/inbox").status_code == 303
    assert sign_in(hc.client).status_code == 403
    assert sign_in(hc.client, password="a brand new password").status_code == 303
    # Removing the account ends its sessions too.
    assert (
        hc.client.delete("/admin/physicians/rahimi", headers=hc.admin_headers()).status_code == 204
    )
    assert_no_patient_data(hc.client.get("/inbox", follow_redirects=True))


def test_a_new_sign_in_replaces_the_browsers_old_session(hc: HubClient) -> None:
    two_physicians(hc)
    sign_in(hc.client)
    first = session_cookie(hc.client)
    sign_in(hc.client, "other", "another long password")
    assert session_cookie(hc.client) != first
    assert hc.hub.store.session(first) is None
    page = hc.client.get("/inbox").get_data(as_text=True)
    assert OTHER_SHOWN in page and SHOWN_CODE not in page


# -- the sign-in form ------------------------------------------------------------------------


def test_sign_in_without_csrf_is_refused(hc: HubClient) -> None:
    two_physicians(hc)
    good = {"login": "rahimi", "password": PASSWORD}
    # No form fetched: no nonce cookie, no token.
    bare = hc.client.post("/physician/sign-in", data=good)
    assert bare.status_code == 400 and hc.client.get_cookie("medix-session") is None
    # The cookie is there (the form was fetched) but the post has no token.
    hc.client.get("/physician/sign-in")
    assert hc.client.post("/physician/sign-in", data=good).status_code == 400
    # A token from another browser's form does not fit this browser's cookie.
    other = hc.app.test_client()
    foreign = csrf_token(other.get("/physician/sign-in").get_data(as_text=True))
    response = hc.client.post("/physician/sign-in", data={**good, "csrf_token": foreign})
    assert response.status_code == 400
    for junk in ("", "0" * 64, "\u00e9" * 64, "x" * 10000):
        response = hc.client.post("/physician/sign-in", data={**good, "csrf_token": junk})
        assert response.status_code == 400, junk[:8]
    assert hc.client.get_cookie("medix-session") is None
    assert_no_patient_data(hc.client.get("/inbox", follow_redirects=True))
    # Refused forms are not wrong passwords: the right one still works at once.
    assert sign_in(hc.client).status_code == 303


def test_sign_in_cookies_are_httponly_strict_and_host_only_over_tls(hc: HubClient) -> None:
    two_physicians(hc)
    form = hc.client.get("/physician/sign-in")
    assert "HttpOnly" in form.headers["Set-Cookie"]
    assert "SameSite=Strict" in form.headers["Set-Cookie"]
    signed = sign_in(hc.client)
    assert signed.status_code == 303 and signed.headers["Location"].endswith("/inbox")
    cookie = next(c for c in signed.headers.getlist("Set-Cookie") if "medix-session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Max-Age" not in cookie and "Expires" not in cookie  # gone with the browser
    # Over TLS the cookie is Secure and __Host- (no sibling host can plant one).
    tls = hc.app.test_client()
    https = {"wsgi.url_scheme": "https", "REMOTE_ADDR": "192.0.2.60"}
    page = tls.get("/physician/sign-in", environ_overrides=https).get_data(as_text=True)
    secure = tls.post(
        "/physician/sign-in",
        data={"login": "rahimi", "password": PASSWORD, "csrf_token": csrf_token(page)},
        environ_overrides=https,
    )
    assert secure.status_code == 303
    cookie = next(c for c in secure.headers.getlist("Set-Cookie") if "medix-session=" in c)
    assert cookie.startswith("__Host-medix-session=") and "Secure" in cookie
    inbox = tls.get("/inbox", environ_overrides=https)
    assert SHOWN_CODE in inbox.get_data(as_text=True)
    # The same token under the plain name (planted over http) is not looked at over TLS.
    planted = hc.app.test_client()
    planted.set_cookie("medix-session", cookie.split(";")[0].split("=", 1)[1])
    assert planted.get("/inbox", environ_overrides=https).status_code == 303


def test_wrong_login_and_wrong_password_look_the_same(hc: HubClient) -> None:
    two_physicians(hc)
    wrong_password = sign_in(hc.client, "rahimi", "not the password at all")
    no_such_login = sign_in(hc.client, "nobody", PASSWORD)
    assert wrong_password.status_code == no_such_login.status_code == 403
    text = wrong_password.get_data(as_text=True)
    assert "The login or the password is wrong." in text
    assert "The login or the password is wrong." in no_such_login.get_data(as_text=True)
    assert "Karimi" not in text and 'value="rahimi"' in text  # the form again, login kept
    for login, password in (
        ("", ""),
        ("rahimi", ""),
        ("rahimi", "x" * 100_000),  # refused without hashing it
        ("rahimi\0", PASSWORD),
        ("\u0440ahimi", PASSWORD),  # Cyrillic er
        ("x" * 10_000, PASSWORD),
        ("' OR 1=1 --", PASSWORD),
    ):
        response = sign_in(hc.client, login, password, "192.0.2.77")
        assert response.status_code == 403, login[:12]
        hc.clock.advance(3600)  # keep the address's guesses topped up


def test_wrong_passwords_are_limited_per_address(hc: HubClient) -> None:
    two_physicians(hc)
    limits = hc.hub.config.rate_limits
    attacker = "198.51.100.23"
    for n in range(int(limits.guesses.burst)):
        # Different logins: the address bucket, not the account's, stops this.
        response = sign_in(hc.client, f"guess{n}", "wrong password!", attacker)
        assert response.status_code == 403
    locked = sign_in(hc.client, "rahimi", PASSWORD, attacker)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert "<form" not in locked.get_data(as_text=True)
    assert hc.client.get_cookie("medix-session") is None
    # Another address is not affected.
    other = hc.app.test_client()
    assert sign_in(other, "rahimi", PASSWORD, "198.51.100.24").status_code == 303
    # The bucket refills: one more try after the wait.
    hc.clock.advance(float(locked.headers["Retry-After"]))
    assert sign_in(hc.client, "rahimi", PASSWORD, attacker).status_code == 303


def test_wrong_passwords_are_limited_per_account_from_many_addresses(hc: HubClient) -> None:
    two_physicians(hc)
    burst = int(hc.hub.config.rate_limits.accounts.burst)
    for n in range(burst):
        assert (
            sign_in(hc.client, "rahimi", f"guess number {n}", f"203.0.113.{n}").status_code == 403
        )
    locked = sign_in(hc.client, "rahimi", PASSWORD, "203.0.113.200")
    assert locked.status_code == 429 and locked.headers["Retry-After"]
    # Other accounts are not affected.
    assert sign_in(hc.client, "other", "another long password", "203.0.113.201").status_code == 303
    hc.clock.advance(float(locked.headers["Retry-After"]))
    assert sign_in(hc.client, "rahimi", PASSWORD, "203.0.113.202").status_code == 303


# -- accounts (admin) ------------------------------------------------------------------------


def test_admin_makes_lists_and_removes_physician_accounts(hc: HubClient) -> None:
    account = hc.add_physician("Dr.Rahimi", "  Rahimi^Ali ")
    assert account["login"] == "dr.rahimi" and account["name"] == "Rahimi^Ali"
    assert account["physician_key"] == "rahimi^ali"
    assert set(account) == {"login", "name", "physician_key", "created_at", "password_set_at"}
    listed = hc.admin_get("/physicians").get_json()["physicians"]
    assert [p["login"] for p in listed] == ["dr.rahimi"]
    assert hc.admin_get("/physicians/DR.RAHIMI").get_json()["login"] == "dr.rahimi"
    duplicate = hc.admin_post(
        "/physicians", json={"login": "dr.rahimi", "name": "X^Y", "password": PASSWORD}
    )
    assert duplicate.status_code == 409
    for bad in (
        {"login": "ok", "name": "A^B", "password": "short"},
        {"login": "ok", "name": "   ", "password": PASSWORD},
        {"login": "no spaces", "name": "A^B", "password": PASSWORD},
        {"login": "-dash", "name": "A^B", "password": PASSWORD},
        {"login": "\u0440ahimi", "name": "A^B", "password": PASSWORD},
        {"login": "samesame12345", "name": "A^B", "password": "SameSame12345"},
        {"login": "ok", "name": "A^B", "password": "x" * 257},
        {"login": "ok", "name": "A^B", "password": PASSWORD, "admin": True},
        {"login": "ok", "name": "A^B"},
    ):
        response = hc.admin_post("/physicians", json=bad)
        assert response.status_code == 422, bad
        assert PASSWORD not in response.get_data(as_text=True)
    assert hc.client.post("/admin/physicians", json={"login": "x"}).status_code == 401
    assert hc.client.get("/admin/physicians").status_code == 401
    assert hc.admin_get("/physicians/nobody").status_code == 404
    missing = hc.client.put(
        "/admin/physicians/nobody/password",
        json={"password": PASSWORD},
        headers=hc.admin_headers(),
    )
    assert missing.status_code == 404
    assert (
        hc.client.delete("/admin/physicians/nobody", headers=hc.admin_headers()).status_code == 404
    )
    assert (
        hc.client.delete("/admin/physicians/dr.rahimi", headers=hc.admin_headers()).status_code
        == 204
    )
    assert hc.admin_get("/physicians").get_json() == {"physicians": []}


def test_passwords_and_session_tokens_are_kept_only_as_hashes(hc: HubClient) -> None:
    two_physicians(hc)
    sign_in(hc.client)
    token = session_cookie(hc.client)
    with sqlite3.connect(hc.hub.config.data_dir / "hub.sqlite3") as db:
        [(stored,)] = db.execute("SELECT password_hash FROM physicians WHERE login = 'rahimi'")
        sessions = db.execute("SELECT * FROM physician_sessions").fetchall()
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password("nope", stored)
    assert sessions and token not in repr(sessions)
    assert "password_hash" not in repr(hc.hub.store.physician("rahimi"))
