# ruff: noqa: RUF001 - Persian letters and digits look like Latin to ruff
"""How the box's pages write texts, numbers, measures, dates and names in each language
(afra_web.i18n over medix.l10n), read inside a request as the templates call them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from flask import Flask

from afra_web import i18n
from afra_web.forms import Msg
from medix import l10n

NBSP = "\u00a0"
app = Flask(__name__)
app.secret_key = "test"


@pytest.fixture
def fa() -> Iterator[None]:
    with app.test_request_context("/", headers={"Accept-Language": "fa"}):
        yield


@pytest.fixture
def en() -> Iterator[None]:
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        yield


def test_the_persian_catalogue_is_the_compiled_one(fa: None) -> None:
    assert i18n.language() == "fa"
    assert type(i18n.catalogue("fa")).__name__ == "Translations"  # found, not a stand-in
    assert i18n.translate("Dashboard") == "داشبورد"
    assert i18n.translate(Msg("Line {n}: {why}", {"n": 3, "why": "x"})) == "سطر ۳: x"


def test_english_is_the_text_itself(en: None) -> None:
    assert i18n.translate("Dashboard") == "Dashboard"
    assert i18n.translate("Use at most {n} characters.", n=256) == "Use at most 256 characters."


@pytest.mark.parametrize(
    ("n", "english", "persian"),
    [
        (0, "0 objects received", "۰ شیء دریافت شد"),
        (1, "1 object received", "۱ شیء دریافت شد"),
        (2, "2 objects received", "۲ شیء دریافت شد"),
        (1234, "1,234 objects received", "۱٬۲۳۴ شیء دریافت شد"),
    ],
)
def test_plurals_follow_each_languages_rule(n: int, english: str, persian: str) -> None:
    for lang, expected in (("en", english), ("fa", persian)):
        with app.test_request_context("/", headers={"Accept-Language": lang}):
            got = i18n.ntranslate("{n} object received", "{n} objects received", n)
            assert got == expected


def test_one_study_delivered_is_singular(en: None) -> None:
    one = i18n.ntranslate("{n} study delivered", "{n} studies delivered", 1)
    two = i18n.ntranslate("{n} study delivered", "{n} studies delivered", 2)
    assert (one, two) == ("1 study delivered", "2 studies delivered")
    assert i18n.fmt_age(86400) == f"1{NBSP}day" and i18n.fmt_age(2 * 86400) == f"2{NBSP}days"


def test_persian_numbers_and_measures(fa: None) -> None:
    assert i18n.fmt_number(3) == "۳"
    assert i18n.fmt_number(1234567) == "۱٬۲۳۴٬۵۶۷"
    assert i18n.fmt_bytes(1_500_000) == f"۱٫۵{NBSP}مگابایت"
    assert i18n.fmt_bytes(512) == f"۵۱۲{NBSP}بایت"
    assert i18n.fmt_percent(45) == "۴۵٪"
    assert i18n.fmt_age(150) == f"۲{NBSP}دقیقه"
    assert i18n.fmt_age(3 * 3600 + 5 * 60) == NBSP.join(("۳", "ساعت", "و", "۵", "دقیقه"))


def test_english_numbers_and_measures_keep_their_units(en: None) -> None:
    assert i18n.fmt_bytes(1_500_000) == f"1.5{NBSP}MB"
    assert i18n.fmt_bytes(512) == f"512{NBSP}B"
    assert i18n.fmt_percent(45) == "45%"
    assert i18n.fmt_age(45) == f"45{NBSP}s"
    assert i18n.fmt_age(3 * 3600 + 5 * 60) == f"3{NBSP}h{NBSP}5{NBSP}min"
    # A number inside a sentence is not grouped: it may be a port.
    assert "11112" in i18n.translate("Port {n} is the web page's port; choose another.", n=11112)


def test_a_unit_never_leaves_its_number(fa: None) -> None:
    for text in (i18n.fmt_bytes(10**9), i18n.fmt_age(7200), i18n.fmt_percent(99)):
        assert " " not in text, repr(text)


def test_dicom_dates_are_dates_in_the_readers_calendar() -> None:
    assert l10n.dicom_date("20261120", "en") == "2026-11-20"
    assert l10n.dicom_date("20261120", "fa") == "۱۴۰۵/۸/۲۹"
    assert l10n.dicom_date("20250321", "fa") == "۱۴۰۴/۱/۱"  # Nowruz
    assert l10n.dicom_date("not a date", "fa") == "not a date"
    assert l10n.dicom_date("20261340", "fa") == "20261340"  # no such day: shown as it is
    assert l10n.dicom_date("", "en") == ""
    assert l10n.dicom_time("143005.123", "en") == "14:30:05"
    assert l10n.dicom_time("0930", "fa") == "۰۹:۳۰"


def test_times_are_solar_hijri_in_persian_and_gregorian_in_english() -> None:
    moment = dt.datetime(2027, 1, 15, 8, 5, 9, tzinfo=dt.UTC)
    assert l10n.format_datetime(moment, "en") == "2027-01-15 08:05:09 UTC"
    assert l10n.format_datetime(moment, "fa") == "۱۴۰۵/۱۰/۲۵ ۰۸:۰۵:۰۹ UTC"


def test_fmt_time_is_the_boxs_local_time(fa: None) -> None:
    at = 1_800_000_000.0
    local = dt.datetime.fromtimestamp(at, dt.UTC).astimezone()
    assert i18n.fmt_time(at) == l10n.format_datetime(local, "fa")
    assert i18n.fmt_time(None) == "—"


def test_typed_dates_in_either_calendar() -> None:
    assert l10n.read_date("۱۳۵۸/۱۱/۱۱", "fa") == dt.date(1980, 1, 31)
    assert l10n.read_date("1358-11-11", "fa") == dt.date(1980, 1, 31)
    assert l10n.read_date("13581111", "fa") == dt.date(1980, 1, 31)
    assert l10n.read_date("1980-01-31", "fa") == dt.date(1980, 1, 31)  # a Gregorian year
    assert l10n.read_date("1358/12/31", "fa") is None  # 1358 is not a leap year
    assert l10n.read_date("31/01/1980", "en") is None


@pytest.mark.parametrize(
    ("pn", "shown"),
    [
        ("Karimi^Sara", "Sara Karimi"),
        ("Doe^Jane^M^Dr^Jr", "Dr Jane M Doe Jr"),
        ("Karimi^^^", "Karimi"),
        ("^Sara", "Sara"),
        ("Sara Karimi", "Sara Karimi"),  # already written out
        ("Karimi^Sara=کریمی^سارا", "Sara Karimi"),  # the alphabetic group
        ("", ""),
    ],
)
def test_person_names_as_people_write_them(pn: str, shown: str) -> None:
    assert l10n.person_name(pn) == shown


def test_direction_comes_from_cldr() -> None:
    assert (l10n.direction("fa"), l10n.direction("en")) == ("rtl", "ltr")
