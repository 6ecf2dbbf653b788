"""The dashboard: health, queue, studies and their codes, audit, diagnostics, settings."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from afra.app import Appliance
from afra.medis.codes import format_code
from afra.system.provision import new_setup_code
from tests.conftest import BoxFactory, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import free_port, storescu
from tests.web.conftest import (
    PASSWORD,
    AppFactory,
    error_for,
    finish_setup,
    post,
    text,
)


@pytest.fixture
def running(make_box: BoxFactory, tmp_path: Path) -> Appliance:
    return make_box(tmp_path / "live", hub={"patient_url": "https://hub.example/patient"})


@pytest.fixture
def pacs(make_box: BoxFactory, tmp_path: Path) -> Appliance:
    """Another box plays the PACS: it answers C-ECHO (and refuses the C-FIND it lacks)."""
    return make_box(tmp_path / "pacs")


@pytest.fixture
def dash(running: Appliance, pacs: Appliance, make_app: AppFactory, tmp_path: Path) -> FlaskClient:
    client = make_app(running).test_client()
    finish_setup(
        client,
        new_setup_code(tmp_path / "live"),
        port=str(free_port()),
        pacs_ae="AFRA",
        pacs_port=str(pacs.dicom.port),
    )
    return client


def send_study(box: Appliance, clock: FakeClock, tmp_path: Path, name: str) -> str:
    """A study stored, complete and given its Medis code; returns the code."""
    files = make_ct_series(
        tmp_path / name, n=3, rows=32, cols=32, patient_id=name, patient_name=f"{name}^Test"
    )
    storescu("127.0.0.1", box.dicom.port, files)
    clock.advance(61)  # past the stable age

    def code() -> str | None:
        box.uplink.issue_codes()
        coded = [s for s in box.index.studies() if s.patient_id == name and s.medis_code]
        return str(coded[0].medis_code) if coded else None

    return str(wait_for(code, timeout=30, what=f"a Medis code for study {name}"))


def test_the_dashboard_shows_health_queue_and_the_front_panel(dash: FlaskClient) -> None:
    page = dash.get("/dashboard")
    assert page.status_code == 200
    body = text(page)
    for heading in ("Health", "Queue", "Recent studies", "Download jobs", "Disk", "Medix hub"):
        assert heading in body
    html = page.get_data(as_text=True)
    assert re.search(r'class="led c-green( lit)?" data-steps="[\d.,]+"', html)  # the health LED
    assert '<svg class="chart"' in html and html.count("<rect") == 12
    assert "No studies yet." in body
    status = dash.get("/api/status").get_json()
    assert {"health", "leds", "queue", "disk", "hub", "sightings"} <= set(status)
    assert status["queue"]["waiting"] == 0


def test_codes_are_masked_until_revealed_and_revealing_is_audited(
    dash: FlaskClient, running: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    code = send_study(running, clock, tmp_path, "P1")
    page = dash.get("/dashboard").get_data(as_text=True)
    assert "Test P1" in page  # DICOM "P1^Test" (Family^Given), shown Given Family
    assert format_code(code) not in page and code not in page
    assert "••••-••••-••••" in page
    [study] = [s for s in running.index.studies() if s.patient_id == "P1"]
    revealed = post(dash, f"/studies/{study.id}/reveal")
    assert revealed.status_code == 200
    assert format_code(code) in text(revealed)
    audit = text(dash.get("/audit"))
    assert "code revealed" in audit and "Sara Technician" in audit and f"…{code[-4:]}" in audit
    assert code not in audit  # the log says which code, without listing working codes
    assert dash.get("/dashboard").status_code == 200
    assert format_code(code) not in dash.get("/dashboard").get_data(as_text=True)


def test_the_patient_slip_prints_with_its_qr_code(
    dash: FlaskClient, running: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    code = send_study(running, clock, tmp_path, "P2")
    [study] = [s for s in running.index.studies() if s.patient_id == "P2"]
    slip = post(dash, f"/studies/{study.id}/slip")
    assert slip.status_code == 200
    html = slip.get_data(as_text=True)
    assert format_code(code) in html and "<svg" in html and "Test P2" in html
    assert "/static/print.js" in html
    csp = slip.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "style-src 'self' 'sha256-" in csp
    assert "slip printed" in text(dash.get("/audit"))
    assert dash.post(f"/studies/{study.id}/slip").status_code == 400  # no CSRF token
    assert post(dash, "/studies/99999/slip").status_code == 404


def test_the_queue_counts_what_waits(
    dash: FlaskClient, running: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    send_study(running, clock, tmp_path, "P3")
    status = dash.get("/api/status?chart=1").get_json()
    assert status["queue"]["waiting"] == 1  # coded, not delivered: no hub
    assert status["throughput"]["instances"] == 3
    assert sum(status["throughput"]["bins"]) == 3
    body = text(dash.get("/dashboard"))
    assert "3 objects received, 0 studies delivered" in body


def test_the_audit_log_exports_as_csv(
    dash: FlaskClient, running: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    send_study(running, clock, tmp_path, "=cmd")  # a name a spreadsheet would run
    [study] = [s for s in running.index.studies() if s.patient_id == "=cmd"]
    post(dash, f"/studies/{study.id}/reveal")
    response = dash.get("/audit.csv")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == [
        "time",
        "operator",
        "address",
        "action",
        "study_uid",
        "patient",
        "code",
        "detail",
    ]
    actions = [r[3] for r in rows[1:]]
    assert actions[:2] == ["claim", "password set"]
    revealed = next(r for r in rows if r[3] == "code revealed")
    assert revealed[5].startswith("'=cmd")


def test_the_diagnostics_bundle_downloads(dash: FlaskClient) -> None:
    response = dash.get("/diagnostics")
    assert response.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as bundle:
        names = set(bundle.namelist())
    assert {"version.txt", "status.json", "config.json"} <= names
    assert "diagnostics downloaded" in text(dash.get("/audit"))


def test_the_pacs_echo_button(dash: FlaskClient, pacs: Appliance) -> None:
    response = post(dash, "/pacs/echo", follow_redirects=True)
    assert "The PACS answered the C-ECHO with status 0x0000" in text(response)
    seen = pacs.dicom.sightings.get("AFRA_CT")
    assert seen is not None and seen.last_echo_at is not None
    pacs.dicom.stop()
    response = post(dash, "/pacs/echo", follow_redirects=True)
    assert "Nothing answers at 127.0.0.1 port" in text(response)


def test_download_jobs_are_listed(dash: FlaskClient) -> None:
    assert "No download jobs." in text(dash.get("/dashboard"))


def test_changing_the_password(dash: FlaskClient, make_app: AppFactory, running: Appliance) -> None:
    other = make_app(running).test_client()
    post(other, "/login", {"name": "Reza", "password": PASSWORD})
    assert other.get("/dashboard").status_code == 200
    wrong = post(dash, "/settings/password", {"current": "x", "password": "a", "confirm": "b"})
    assert wrong.status_code == 400
    assert error_for(wrong, "current") == "This password is wrong."
    assert "Use at least 10 characters" in error_for(wrong, "password")
    assert error_for(wrong, "confirm") == "The two passwords differ."
    new = "Brand-New-Passw0rd"
    ok = post(dash, "/settings/password", {"current": PASSWORD, "password": new, "confirm": new})
    assert ok.location.endswith("/settings")
    assert "Password changed" in text(dash.get("/settings"))
    assert other.get("/dashboard").location.endswith("/login")  # the other device is out


def test_the_right_current_password_clears_earlier_wrong_ones(
    dash: FlaskClient, running: Appliance
) -> None:
    lockout = running.config.box.data_dir / "web" / "lockout.json"
    for _ in range(4):  # one short of the lockout
        post(dash, "/settings/password", {"current": "x", "password": "a", "confirm": "a"})
    assert lockout.exists()
    post(dash, "/settings/password", {"current": PASSWORD, "password": "a", "confirm": "a"})
    assert not lockout.exists()  # a later typo does not lock the admin out


def test_the_dashboard_waits_for_setup(client: FlaskClient, setup_code: str) -> None:
    from tests.web.conftest import claim

    claim(client, setup_code)
    assert client.get("/dashboard").location.endswith("/setup/password")
    assert client.get("/settings").status_code == 200


def test_the_dashboard_in_persian(dash: FlaskClient) -> None:
    post(dash, "/lang", {"lang": "fa"})
    page = dash.get("/dashboard").get_data(as_text=True)
    assert 'dir="rtl"' in page and "داشبورد" in page and "صف" in page


def test_the_front_panel_shows_unfinished_setup(
    running: Appliance, make_app: AppFactory, tmp_path: Path, pacs: Appliance
) -> None:
    client = make_app(running).test_client()
    reasons = running.health.snapshot()["reasons"]
    assert any(r["source"] == "wizard" and r["condition"] == "unclaimed" for r in reasons)
    finish_setup(
        client,
        new_setup_code(tmp_path / "live"),
        port=str(free_port()),
        pacs_ae="AFRA",
        pacs_port=str(pacs.dicom.port),
    )
    reasons = running.health.snapshot()["reasons"]
    assert not any(r["source"] == "wizard" for r in reasons)
