# ruff: noqa: RUF001 - Persian letters and digits look like Latin to ruff
"""The hub's patient page and physician inbox in English and Persian: the browser's language
first, a switch kept in a cookie, Persian digits, Solar Hijri dates (read and typed), the
patient's name as the slip writes it; and the hub's own catalogue, whole."""

from __future__ import annotations

import fnmatch
import random
import re
import tomllib

import pytest
from babel.messages.catalog import Catalog
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from afra.medis.codes import new_code
from afra.medis.slip import SlipLanguage, render_slip
from medix import l10n
from medix.hub import i18n
from tests.catalogues import (
    ROOT,
    extract,
    lost_placeholders,
    mo_matches_po,
    plural_header_problems,
    read,
    stale,
    untranslated,
)
from tests.medix.conftest import HubClient, sign_in
from tests.medix.nodekit import MEDIS_CODE, make_study

PO = i18n.TRANSLATIONS / "fa" / "LC_MESSAGES" / "hub.po"
MO = PO.with_suffix(".mo")
PERSIAN = {"Accept-Language": "fa-IR,fa;q=0.9,en;q=0.5"}


def page_text(response: TestResponse) -> str:
    body = re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))
    return " ".join(body.replace("&#39;", "'").replace("&amp;", "&").split())


def patient_post(client: FlaskClient, birth: str, **kw: object) -> TestResponse:
    return client.post("/patient", data={"code": MEDIS_CODE, "birth_date": birth}, **kw)  # type: ignore[arg-type]


# -- the catalogue ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted() -> Catalog:
    return extract("firmware/medix/hub")


@pytest.fixture(scope="module")
def persian() -> Catalog:
    return read(PO, "fa")


def test_every_hub_text_has_its_persian(extracted: Catalog, persian: Catalog) -> None:
    assert len([m for m in extracted if m.id]) > 40
    assert not untranslated(extracted, persian)
    assert not stale(extracted, persian)
    assert not lost_placeholders(persian)
    assert not plural_header_problems(persian, "fa")
    assert mo_matches_po(PO, MO, "fa"), "pybabel compile -d firmware/medix/hub/translations -D hub"


def test_the_wheel_ships_the_hubs_pages_and_catalogue() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["medix.hub"]
    package = ROOT / "firmware" / "medix" / "hub"
    shipped = [MO, *sorted((package / "templates").glob("*.html"))]
    for path in shipped:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


# -- the language ----------------------------------------------------------------------------


def test_the_patient_page_is_persian_when_the_browser_prefers_it(hc: HubClient) -> None:
    response = hc.client.get("/patient", headers=PERSIAN)
    page = response.get_data(as_text=True)
    assert '<html lang="fa" dir="rtl">' in page
    assert "مطالعهٔ خود را باز کنید" in page and "تاریخ تولد شما" in page
    assert response.headers["Content-Language"] == "fa"
    assert "Accept-Language" in response.headers["Vary"]
    english = hc.client.get("/patient", headers={"Accept-Language": "en-GB,en;q=0.8"})
    assert '<html lang="en" dir="ltr">' in english.get_data(as_text=True)
    assert "Open your study" in english.get_data(as_text=True)
    assert hc.client.get("/patient").headers["Content-Language"] == "en"  # no preference


def test_the_switch_overrides_the_browser_and_is_kept(hc: HubClient) -> None:
    page = hc.client.get("/patient?code=K7QM2XHP9RTC", headers=PERSIAN).get_data(as_text=True)
    # Both links of the switch keep the code the slip's QR link carries.
    assert 'href="/patient?code=K7QM2XHP9RTC&amp;lang=en"' in page
    assert 'href="/patient?code=K7QM2XHP9RTC&amp;lang=fa"' in page
    chosen = hc.client.get("/patient?lang=en", headers=PERSIAN)
    assert "Open your study" in chosen.get_data(as_text=True)
    cookie = chosen.headers["Set-Cookie"]
    assert cookie.startswith("medix-lang=en;") and "HttpOnly" in cookie
    later = hc.client.get("/physician/sign-in", headers=PERSIAN)  # the cookie, not the browser
    assert "Sign in to your inbox" in later.get_data(as_text=True)
    assert hc.client.get("/patient?lang=xx", headers=PERSIAN).headers["Content-Language"] == "en"
    hc.client.get("/patient?lang=fa")
    assert "ورود به صندوق مطالعه‌ها" in hc.client.get("/physician/sign-in").get_data(as_text=True)


def test_the_api_stays_english_json(hc: HubClient) -> None:
    response = hc.client.get("/medix/v1/heartbeat", headers=PERSIAN)
    assert response.mimetype == "application/problem+json"
    assert "Content-Language" not in response.headers


# -- what a Persian patient reads and types -------------------------------------------------


def test_a_persian_patient_types_the_solar_hijri_birth_date(hc: HubClient) -> None:
    hc.upload(make_study())
    # 1980-01-31 is 11 Bahman 1358; typed in Persian digits, as a Persian phone keyboard does.
    response = patient_post(hc.client, "۱۳۵۸/۱۱/۱۱", headers=PERSIAN)
    assert response.status_code == 200, page_text(response)
    body = page_text(response)
    assert "مطالعهٔ شما" in body
    assert "۱۴۰۳/۱۲/۱۱" in body  # the study date, 2025-03-01, in the Solar Hijri calendar
    assert "2025-03-01" not in body
    assert re.search(r">\s*۴\s*<", response.get_data(as_text=True))  # four images
    assert "Sara Karimi" in body  # DICOM "Karimi^Sara": given name first
    assert "CHEST PA" in body and "دانلود" in body
    # The Gregorian date still works on the Persian page; English pages take the date field's.
    assert patient_post(hc.client, "1980-01-31", headers=PERSIAN).status_code == 200
    english = patient_post(hc.client, "1980-01-31")
    assert english.status_code == 200 and "2025-03-01" in page_text(english)
    assert 'type="date"' in hc.client.get("/patient").get_data(as_text=True)
    assert 'type="date"' not in hc.client.get("/patient", headers=PERSIAN).get_data(as_text=True)


def test_refusals_are_told_in_persian_with_their_numbers(hc: HubClient) -> None:
    hc.admin_post("/policy", json={"version": 1, "code_max_attempts": 3})
    hc.upload(make_study())
    wrong = patient_post(hc.client, "۱۳۵۸/۱۱/۱۲", headers=PERSIAN)
    assert wrong.status_code == 403
    body = page_text(wrong)
    assert "کد یا تاریخ تولد نادرست است" in body and "۲ بار دیگر" in body
    assert "tries left" not in body
    english = patient_post(hc.client, "19800130")
    assert "Code or birth date wrong" in page_text(english) and "1 tries left" in page_text(english)
    missing = patient_post(hc.client, "", headers=PERSIAN)
    assert missing.status_code == 400 and "کد و تاریخ تولد لازم است" in page_text(missing)
    unknown = hc.client.get("/download/nothing.1.x", headers=PERSIAN)
    assert unknown.status_code == 404 and "چنین دانلودی نیست" in page_text(unknown)


def test_the_inbox_in_persian(hc: HubClient) -> None:
    hc.add_physician()
    hc.upload(make_study())
    hc.client.get("/patient?lang=fa")
    assert sign_in(hc.client).status_code == 303
    inbox = hc.client.get("/inbox")
    body = page_text(inbox)
    assert "مطالعه‌هایی که Ali Rahimi ارجاع داده است" in body  # "Rahimi^Ali"
    assert "۱۴۰۳/۱۲/۱۱" in body and "Sara Karimi" in body and "کد مدیس" in body
    assert "K7QM-2XHP-9RTC" in body  # the code stays Latin, grouped
    assert "خروج" in body
    hc.client.get("/patient?lang=en")
    english = page_text(hc.client.get("/inbox"))
    assert "Studies referred by Ali Rahimi" in english and "2025-03-01" in english


def test_the_slip_and_the_hub_write_the_patient_the_same_way(hc: HubClient) -> None:
    study = make_study()
    hc.upload(study)
    hub_page = page_text(patient_post(hc.client, "۱۳۵۸/۱۱/۱۱", headers=PERSIAN))
    slip = render_slip(
        code=new_code(random.Random(3).randrange),  # the box's codes carry a check symbol
        patient_name=study.registration.patient.name,
        study_date=study.registration.study_date,
        study_description=study.registration.study_description,
        center_name="Day Imaging",
        hub_patient_url="https://hub.example/patient",
        language=SlipLanguage("fa"),
    )
    name = l10n.person_name(study.registration.patient.name)
    date = l10n.dicom_date(study.registration.study_date, "fa")
    assert (name, date) == ("Sara Karimi", "۱۴۰۳/۱۲/۱۱")
    assert name in hub_page and date in hub_page
    assert name in slip and date in slip
