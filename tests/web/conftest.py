"""Fixtures for the web app: a box (real appliance, fake network), its Flask app and client,
and helpers that walk a client through the claim and the wizard."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from afra.app import Appliance, build_appliance
from afra.system.provision import new_setup_code
from afra_web import create_app
from afra_web.network import NetworkError, NetworkInfo, StaticAddress
from tests.conftest import make_config
from tests.fakes import FakeClock

PASSWORD = "Correct-Horse-42"
BOX_IP = "192.0.2.10"
# Debian's Chromium, headless, as the browser tests and `make screenshots` start it.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class FakeNetwork:
    """The network seam: fixed facts; applied changes are kept for the test to read."""

    def __init__(self) -> None:
        self.info = NetworkInfo(
            interface="eth0",
            address=f"{BOX_IP}/24",
            hostname="afra-test",
            gateway="192.0.2.1",
            dns=("192.0.2.53",),
            link_speed_mbps=1000,
            mode="dhcp",
            addresses=(f"{BOX_IP}/24",),
        )
        self.applied: list[StaticAddress | None] = []
        self.fail: str | None = None

    def read(self) -> NetworkInfo:
        return self.info

    def apply(self, static: StaticAddress | None) -> None:
        if self.fail:
            raise NetworkError(self.fail)
        self.applied.append(static)


@pytest.fixture
def network() -> FakeNetwork:
    return FakeNetwork()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "box"


@pytest.fixture
def setup_code(data_dir: Path) -> str:
    """The code printed on the box's label (its hash is all the box keeps)."""
    return new_setup_code(data_dir)


@pytest.fixture
def appliance(data_dir: Path, clock: FakeClock, setup_code: str) -> Iterator[Appliance]:
    """The box, built but not started: its routes need its index, identity and settings."""
    box = build_appliance(make_config(data_dir, web={"port": 8080}), clock=clock)
    yield box
    box.close()


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(network: FakeNetwork, clock: FakeClock) -> AppFactory:
    def factory(box: Appliance) -> Flask:
        app = create_app(box, network=network, clock=clock)
        app.testing = True
        return app

    return factory


@pytest.fixture
def app(appliance: Appliance, make_app: AppFactory) -> Flask:
    return make_app(appliance)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- helpers ---------------------------------------------------------------------------------


def token(client: FlaskClient) -> str:
    """The session's CSRF token (made on first use, as a page would)."""
    with client.session_transaction() as session:
        if "csrf_token" not in session:
            session["csrf_token"] = "t" * 43
        return str(session["csrf_token"])


def post(
    client: FlaskClient, url: str, data: dict[str, Any] | None = None, **kw: Any
) -> TestResponse:
    return client.post(url, data={**(data or {}), "csrf_token": token(client)}, **kw)


def text(response: TestResponse) -> str:
    """The page as a person reads it: tags dropped, entities of interest decoded."""
    body = response.get_data(as_text=True)
    body = re.sub(r"<[^>]+>", " ", body)
    body = body.replace("&#39;", "'").replace("&amp;", "&").replace("&#34;", '"')
    return " ".join(body.split())


def error_for(response: TestResponse, field: str) -> str:
    """The message shown next to a field ("" when there is none)."""
    body = response.get_data(as_text=True)
    found = re.search(rf'<p class="error" id="e-{field}" role="alert">(.*?)</p>', body, re.S)
    return "" if found is None else " ".join(found.group(1).replace("&#39;", "'").split())


def claim(client: FlaskClient, code: str, name: str = "Sara Technician") -> TestResponse:
    return post(client, "/claim", {"name": name, "code": code, "action": "code"})


def set_password(client: FlaskClient) -> TestResponse:
    return post(client, "/setup/password", {"password": PASSWORD, "confirm": PASSWORD})


def dicom_form(**overrides: str) -> dict[str, str]:
    form = {
        "ae_title": "AFRA_CT",
        "port": "11112",
        "pacs_host": "127.0.0.1",
        "pacs_port": "4242",
        "pacs_ae": "ORTHANC",
        "senders": "",
        "action": "save",
    }
    form.update(overrides)
    return form


def finish_setup(client: FlaskClient, code: str, **dicom: str) -> None:
    """Claim and walk every step with valid answers (the hub step skipped)."""
    assert claim(client, code).status_code == 302
    assert set_password(client).status_code == 302
    assert post(client, "/setup/network", {"action": "keep"}).status_code == 302
    assert post(client, "/setup/dicom", dicom_form(**dicom)).status_code == 302
    assert post(client, "/setup/hub", {"action": "skip"}).status_code == 302
    response = post(client, "/setup/summary")
    assert response.status_code == 302 and response.location.endswith("/dashboard")
