"""The settings page's system update: what the box runs and how its last update went, and an
update file uploaded by the technician (checked by the real `rauc info` against the box's
key; only the write into the other slot and the reboot are faked)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from afra.app import Appliance, build_appliance
from afra.system.provision import new_setup_code
from afra.system.release import Release
from afra.update.rauc import RaucCli
from tests.conftest import make_config, wait_for
from tests.fakes import FakeClock, FakeRauc
from tests.web.conftest import PASSWORD, AppFactory, error_for, finish_setup, post, text

RUNNING = Release(version="1.0.0", image=True, compatible="afra-rpi4-arm64", slot="A")


@pytest.fixture
def image_box(
    tmp_path: Path, clock: FakeClock, bundles: dict[str, Path]
) -> Iterator[tuple[Appliance, FakeRauc]]:
    rauc = FakeRauc(booted="A", info=RaucCli(conf=bundles["conf"]).info)
    box = build_appliance(
        make_config(tmp_path / "box", web={"port": 8080}), clock=clock, rauc=rauc, release=RUNNING
    )
    yield box, rauc
    box.close()


@pytest.fixture
def settings(
    image_box: tuple[Appliance, FakeRauc], make_app: AppFactory, tmp_path: Path
) -> FlaskClient:
    box, _ = image_box
    client = make_app(box).test_client()
    finish_setup(client, new_setup_code(tmp_path / "box"))
    return client


def upload(client: FlaskClient, bundle: Path, password: str = PASSWORD) -> TestResponse:
    with bundle.open("rb") as fp:
        return post(
            client,
            "/settings/update",
            {"update_password": password, "bundle": (fp, bundle.name)},
            content_type="multipart/form-data",
        )


def test_the_page_says_what_runs_and_offers_the_upload(settings: FlaskClient) -> None:
    page = settings.get("/settings")
    shown = text(page)
    assert "System update" in shown and "1.0.0 · system A" in shown
    assert "No update has been installed on this box yet." in shown
    assert 'name="bundle"' in page.get_data(as_text=True)


def test_a_bundle_signed_with_another_key_is_refused_on_the_spot(
    settings: FlaskClient, image_box: tuple[Appliance, FakeRauc], bundles: dict[str, Path]
) -> None:
    box, rauc = image_box
    answer = upload(settings, bundles["foreign"])
    assert answer.status_code == 400
    assert "not signed with this box's update key" in error_for(answer, "bundle")
    assert not [c for c in rauc.calls if c[0] in ("install", "reboot")]
    assert box.updates is not None and box.updates.status.state == "refused"
    assert "The update was refused." in text(settings.get("/settings"))
    web_audit = [e.action for e in box_audit(settings)]
    assert "update refused" in web_audit


def box_audit(client: FlaskClient) -> list[object]:
    from afra_web import current

    with client.application.app_context():
        return list(current().audit.entries(20))


def test_a_good_bundle_is_installed_and_the_box_restarts_into_it(
    settings: FlaskClient, image_box: tuple[Appliance, FakeRauc], bundles: dict[str, Path]
) -> None:
    box, rauc = image_box
    # Flask spools a form's file in the process's temporary folder: the spool's, on the data
    # partition (a bundle is hundreds of MB; /tmp is RAM on a box).
    assert Path(tempfile.gettempdir()).is_relative_to(box.spool.root)
    answer = upload(settings, bundles["good"])
    assert answer.status_code == 302
    assert box.updates is not None and box.updates._writer is not None
    # The bundle is written on a thread of its own; its last step is the restart.
    wait_for(lambda: ("reboot",) in rauc.calls, timeout=30, what="the box to restart into it")
    assert rauc.installed == [bundles["good"].read_bytes()]
    assert rauc.calls[-1] == ("reboot",)
    shown = text(settings.get("/settings"))
    assert "1.1.0 is installed; the box restarts into it. Do not unplug the box." in shown


def test_the_admin_password_is_asked_for_and_wrong_ones_count(
    settings: FlaskClient, image_box: tuple[Appliance, FakeRauc], bundles: dict[str, Path]
) -> None:
    _box, rauc = image_box
    answer = upload(settings, bundles["good"], password="not-the-password")
    assert answer.status_code == 400
    assert error_for(answer, "update_password") == "This password is wrong."
    assert rauc.calls == []
    missing = post(settings, "/settings/update", {"update_password": PASSWORD})
    assert error_for(missing, "bundle") == "Choose the update file (it ends in .raucb)."


def test_nobody_signed_out_can_push_a_large_body(
    image_box: tuple[Appliance, FakeRauc], make_app: AppFactory
) -> None:
    box, _ = image_box
    client = make_app(box).test_client()
    answer = client.post("/settings/update", data=b"x" * (2 * 1024 * 1024))
    assert answer.status_code == 413  # the small limit, before anything is parsed


def test_a_development_box_says_updates_need_the_image(
    tmp_path: Path, clock: FakeClock, make_app: AppFactory
) -> None:
    box = build_appliance(make_config(tmp_path / "dev", web={"port": 8080}), clock=clock)
    try:
        client = make_app(box).test_client()
        finish_setup(client, new_setup_code(tmp_path / "dev"))
        page = client.get("/settings")
        assert "Updates are installed on an AFRA box" in text(page)
        assert 'name="bundle"' not in page.get_data(as_text=True)
    finally:
        box.close()
