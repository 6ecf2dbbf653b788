"""A disk that cannot take the audit log: the dashboard still starts, says so, and keeps the
records until the disk takes them again.

The failures are real: SQLite refusing a database file that is a directory, and a small
tmpfs filled to the last byte (as tests/health does), on which SQLite answers "disk I/O
error" when the audit file is opened and "database or disk is full" when it is written.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from afra.app import Appliance, build_appliance
from afra.system.provision import new_setup_code
from afra_web import web_of
from afra_web.audit import LOST, PENDING_MAX, AuditFile, AuditLog
from tests.conftest import make_config
from tests.disks import fill, tmpfs
from tests.fakes import FakeClock
from tests.web.conftest import PASSWORD, AppFactory, finish_setup, post, text

AUDIT_DOWN = "the audit log cannot be written"


def stop_web(app: Flask) -> None:
    """What the end of the web app's process does to its audit file."""
    web_of(app).audit.close()


def audit_rows(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT action, detail FROM audit ORDER BY id").fetchall()
    finally:
        db.close()


def sign_in_again(client: FlaskClient) -> None:
    assert post(client, "/logout").status_code == 302
    signed_in = post(client, "/login", {"name": "Sara Technician", "password": PASSWORD})
    assert signed_in.status_code == 302


def test_the_dashboard_starts_when_the_audit_file_will_not_open(
    appliance: Appliance, make_app: AppFactory, data_dir: Path, setup_code: str
) -> None:
    first = make_app(appliance)
    client = first.test_client()
    finish_setup(client, setup_code)
    stop_web(first)
    audit = data_dir / "web" / "audit.sqlite"
    for leftover in data_dir.joinpath("web").glob("audit.sqlite*"):
        leftover.unlink()
    audit.mkdir()  # SQLite: "unable to open database file"

    restarted = make_app(appliance)  # once raised sqlite3.OperationalError
    client = restarted.test_client()
    client.set_cookie("afra_session", "")  # a new browser
    assert post(client, "/login", {"name": "Sara Technician", "password": PASSWORD}).location
    page = client.get("/dashboard")
    assert page.status_code == 200
    shown = text(page)
    assert "failed" in shown and AUDIT_DOWN in shown and "unable to open database file" in shown
    # Nothing is lost: the sign-in waits in memory and the audit page shows it and why.
    audit_page = text(client.get("/audit"))
    assert "The audit log cannot be written to the disk" in audit_page
    assert "signed in" in audit_page and "Sara Technician" in audit_page

    audit.rmdir()  # the disk is repaired; the page's next status poll notices
    status = client.get("/api/status").get_json()
    assert not any(AUDIT_DOWN in r for r in status["health"]["reasons"])
    assert ("signed in", "by password") in audit_rows(audit)
    assert "The audit log cannot be written" not in text(client.get("/audit"))


# -- a really full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own (the index reserves 8 MiB of write-ahead log). Mounting needs
    root, as `make test` runs (the storage health tests mount one the same way)."""
    with tmpfs(tmp_path / "disk", 64) as mount:
        yield mount


@pytest.fixture
def box_on_small_disk(small_disk: Path, clock: FakeClock) -> Iterator[tuple[Appliance, str]]:
    """A box (not started) whose data folder is on the small disk, and its setup code."""
    data_dir = small_disk / "box"
    code = new_setup_code(data_dir)
    box = build_appliance(
        make_config(data_dir, web={"port": 8080}, storage={"min_free_mb": 1}), clock=clock
    )
    yield box, code
    box.close()


def test_on_a_full_disk_the_dashboard_comes_back_and_says_why(
    box_on_small_disk: tuple[Appliance, str],
    small_disk: Path,
    make_app: AppFactory,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box, setup_code = box_on_small_disk
    data_dir = box.config.box.data_dir
    first = make_app(box)
    client = first.test_client()
    finish_setup(client, setup_code)
    stop_web(first)
    filler = fill(small_disk)

    caplog.set_level(logging.ERROR, logger="afra.web")
    restarted = make_app(box)  # once raised "disk I/O error"
    for probe in box.monitor.probes if box.monitor else ():
        if probe.name == "storage":
            probe.check(box.health)  # as the running box's monitor does every 10 s
    page = client.get("/dashboard")  # the same browser: its session outlived the restart
    assert page.status_code == 200
    shown = text(page)
    assert "No space left on device" in shown  # the storage check
    assert AUDIT_DOWN in shown and "disk I/O error" in shown

    # Signing out and in again works on the full disk; the records wait in memory.
    client = restarted.test_client()
    assert post(client, "/login", {"name": "Sara Technician", "password": PASSWORD}).location
    sign_in_again(client)
    assert client.get("/dashboard").status_code == 200
    waiting = [e.action for e in web_of(restarted).audit.entries() if e.id == 0]
    assert waiting[:3] == ["signed in", "signed out", "signed in"]
    # One ERROR for the opening, then at most one a minute however many records wait.
    errors = [r for r in caplog.records if "audit log" in r.getMessage()]
    assert len(errors) == 1 and "records wait in memory" in errors[0].getMessage()
    clock.advance(61)
    sign_in_again(client)
    errors = [r for r in caplog.records if "audit log" in r.getMessage()]
    assert len(errors) == 2

    filler.unlink()  # space again
    status = client.get("/api/status").get_json()
    assert not any(AUDIT_DOWN in r for r in status["health"]["reasons"])
    actions = [action for action, _detail in audit_rows(data_dir / "web" / "audit.sqlite")]
    assert actions[-5:] == ["signed in", "signed out", "signed in", "signed out", "signed in"]


# -- the audit log's memory, on its own -------------------------------------------------------


class FlakyDisk:
    """Opens the real audit file only once `working` is set (else SQLite's own error)."""

    def __init__(self) -> None:
        self.working = False

    def __call__(self, path: Path) -> AuditFile:
        if not self.working:
            raise sqlite3.OperationalError("database or disk is full")
        return AuditFile(path)


def test_waiting_records_are_bounded_and_the_loss_is_written_down(tmp_path: Path) -> None:
    disk = FlakyDisk()
    problems: list[str] = []
    log = AuditLog(
        tmp_path / "audit.sqlite", clock=FakeClock(), opener=disk, on_problem=problems.append
    )
    assert problems == [
        "the audit log cannot be written (database or disk is full): its records wait in memory"
    ]
    for i in range(PENDING_MAX + 7):
        log.add(1000.0 + i, "Sara", "192.0.2.20", "code revealed", detail=str(i))
    waiting = log.entries(PENDING_MAX + 100)
    assert len(waiting) == PENDING_MAX  # bounded: the oldest seven went
    assert waiting[0].detail == str(PENDING_MAX + 6) and waiting[-1].detail == "7"

    disk.working = True
    log.add(5000.0, "Sara", "192.0.2.20", "signed out")
    assert problems[-1] == "" and log.problem == ""
    rows = audit_rows(tmp_path / "audit.sqlite")
    assert rows[0] == (LOST, "7 older records could not be kept while the disk failed")
    assert rows[1] == ("code revealed", "7") and rows[-1] == ("signed out", "")
    assert len(rows) == PENDING_MAX + 2
    log.close()
