# ruff: noqa: RUF001 - Persian letters and digits look like Latin to ruff
"""The box's pages in Persian and English for a study received at a fixed (FakeClock) time:
Persian digits and Solar Hijri dates on the dashboard, the audit log and the patient slip,
Gregorian in English, plurals for one and two, the patient's name as people write it."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from afra.app import Appliance, build_appliance
from afra.medis.codes import new_code
from afra.store.records import Demographics
from afra.system.provision import new_setup_code
from medix import l10n
from tests.conftest import make_config
from tests.fakes import FakeClock
from tests.peers import free_port
from tests.web.conftest import AppFactory, finish_setup, post, text

STUDY_UID = "1.2.826.0.1.3680043.10.999.77"
STUDY_DATE = "20261120"  # 29 Aban 1405
NUMBERS = itertools.count(1)


@dataclass(frozen=True)
class Header:
    """What the index is given about one instance (afra.store.records.Header)."""

    sop_instance_uid: str
    study_uid: str = STUDY_UID
    series_uid: str = STUDY_UID + ".1"
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.2"
    transfer_syntax: str = "1.2.840.10008.1.2.1"
    modality: str = "CT"

    def demographics(self) -> Demographics:
        return Demographics(
            patient_id="P77",
            patient_name="Karimi^Sara",
            study_date=STUDY_DATE,
            study_description="CT CHEST",
        )


@pytest.fixture
def box(tmp_path: Path, clock: FakeClock) -> Iterator[Appliance]:
    config = make_config(
        tmp_path / "box",
        web={"port": 8080},
        hub={"patient_url": "https://hub.example/patient"},
    )
    appliance = build_appliance(config, clock=clock)
    yield appliance
    appliance.close()


@pytest.fixture
def dash(box: Appliance, make_app: AppFactory, tmp_path: Path) -> FlaskClient:
    client = make_app(box).test_client()
    finish_setup(client, new_setup_code(tmp_path / "box"), port=str(free_port()))
    return client


def receive(box: Appliance, clock: FakeClock, count: int, ago: float = 0) -> int:
    """`count` instances of one study, received `ago` seconds before now; its index id."""
    added = None
    for _ in range(count):
        n = next(NUMBERS)
        header = Header(sop_instance_uid=f"{STUDY_UID}.1.{n}")
        added = box.index.add_instance(header, f"x/{n}.dcm", 1000, clock.time() - ago, "CT1")
    assert added is not None
    return added.study_id


def persian(client: FlaskClient) -> None:
    post(client, "/lang", {"lang": "fa"})


def test_the_persian_dashboard_writes_counts_and_dates_in_persian(
    dash: FlaskClient, box: Appliance, clock: FakeClock
) -> None:
    receive(box, clock, 3)
    persian(dash)
    body = text(dash.get("/dashboard"))
    row = body[body.index("Sara Karimi") :]  # DICOM "Karimi^Sara": the given name first
    assert row.split()[2:4] == ["۱۴۰۵/۸/۲۹", "۳"], row[:80]  # the study date, three objects
    assert "20261120" not in body and "2026-11-20" not in body
    assert "۳ شیء دریافت شد، ۰ مطالعه به هاب تحویل شد" in body
    status = dash.get("/api/status").get_json()
    assert status["queue"]["waiting_text"] == "۰"
    assert status["disk"]["percent_text"].endswith("٪")


def test_the_english_dashboard_writes_gregorian_dates_and_plurals(
    dash: FlaskClient, box: Appliance, clock: FakeClock
) -> None:
    receive(box, clock, 1, ago=2 * 3600)  # before the last hour
    receive(box, clock, 1)
    body = text(dash.get("/dashboard"))
    assert "Sara Karimi 2026-11-20 2 " in body
    assert "1 object received, 0 studies delivered" in body
    receive(box, clock, 1)
    assert "2 objects received," in text(dash.get("/dashboard"))


def test_the_persian_audit_log_is_in_the_solar_hijri_calendar(
    dash: FlaskClient, box: Appliance, clock: FakeClock
) -> None:
    study_id = receive(box, clock, 3)
    box.index.mark_complete(study_id, clock.time(), 3)
    box.index.set_medis_code(study_id, new_code(random.Random(9).randrange))
    post(dash, f"/studies/{study_id}/reveal")
    local = dt.datetime.fromtimestamp(clock.time(), dt.UTC).astimezone()
    persian(dash)
    body = text(dash.get("/audit"))
    assert l10n.format_date(local.date(), "fa") in body  # 25 Dey 1405 at FakeClock's start
    assert local.strftime("%H:%M:%S").translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")) in body
    assert "کد نمایش داده شد" in body and "Sara Karimi" in body
    assert local.date().isoformat() not in body
    post(dash, "/lang", {"lang": "en"})
    assert local.strftime("%Y-%m-%d %H:%M:%S") in text(dash.get("/audit"))


def test_the_slip_printed_from_the_persian_page_is_persian(
    dash: FlaskClient, box: Appliance, clock: FakeClock
) -> None:
    study_id = receive(box, clock, 3)
    box.index.mark_complete(study_id, clock.time(), 3)
    box.index.set_medis_code(study_id, new_code(random.Random(9).randrange))
    persian(dash)
    slip = post(dash, f"/studies/{study_id}/slip")
    assert slip.status_code == 200
    page = slip.get_data(as_text=True)
    assert '<html lang="fa" dir="rtl">' in page
    assert "کد مدیس شما" in page and ">بیمار<" in page and "تاریخ تولد" in page
    assert "۱۴۰۵/۸/۲۹" in page and "Sara Karimi" in page
    assert "Your Medis code" not in page
    # The page's one <style> is still allowed by its hash, whatever the language.
    assert "style-src 'self' 'sha256-" in slip.headers["Content-Security-Policy"]
    post(dash, "/lang", {"lang": "en"})
    english = post(dash, f"/studies/{study_id}/slip").get_data(as_text=True)
    assert '<html lang="en" dir="ltr">' in english and "Your Medis code" in english
    assert "2026-11-20" in english and "Sara Karimi" in english


def test_the_persian_wizard_counts_in_persian(
    box: Appliance, make_app: AppFactory, tmp_path: Path
) -> None:
    from tests.web.conftest import claim, set_password

    client = make_app(box).test_client()
    persian(client)
    claim(client, new_setup_code(tmp_path / "box"))
    set_password(client)
    page = client.get("/setup/password")
    short = post(client, "/setup/password", {"password": "Ab1!", "confirm": "Ab1!"})
    assert page.status_code == 200 and short.status_code == 400
    assert re.search("دست‌کم ۱۰ نویسه به کار ببرید \\(این یکی ۴ نویسه دارد\\)", text(short))
