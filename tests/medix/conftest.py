"""Fixtures for the hub tests: an in-process app (Flask test client) with an enrolled node,
and a real HTTPS hub on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from medix.hub.app import create_hub, hub_of
from medix.hub.core import Hub, HubConfig
from medix.hub.server import HubServer
from tests.fakes import FakeClock
from tests.medix.nodekit import PHYSICIAN, NodeKey, Study, enrol_body, node_key

ADMIN_TOKEN = "test-admin-token"
API = "/medix/v1"
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class HubClient:
    """The test client, speaking as the admin or as one enrolled node."""

    app: Flask
    client: FlaskClient
    clock: FakeClock
    node_id: str
    node_cert: str
    node: NodeKey

    @property
    def hub(self) -> Hub:
        return hub_of(self.app)

    @property
    def as_node(self) -> dict[str, str]:
        return {"SSL_CLIENT_CERT": self.node_cert}

    def node_get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(API + path, environ_overrides=self.as_node, **kwargs)

    def node_post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.post(API + path, environ_overrides=self.as_node, **kwargs)

    def node_put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.put(API + path, environ_overrides=self.as_node, **kwargs)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def admin_get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get("/admin" + path, headers=self.admin_headers(), **kwargs)

    def admin_post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.post("/admin" + path, headers=self.admin_headers(), **kwargs)

    def add_physician(
        self, login: str = "rahimi", name: str = PHYSICIAN, password: str = PASSWORD
    ) -> dict[str, Any]:
        response = self.admin_post(
            "/physicians", json={"login": login, "name": name, "password": password}
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        account: dict[str, Any] = response.get_json()
        return account

    def pairing_code(self) -> str:
        response = self.admin_post("/pairing-codes")
        assert response.status_code == 201
        code: str = response.get_json()["code"]
        return code

    def enrol(self, name: str = "Another node") -> tuple[str, str, NodeKey]:
        key = node_key()
        response = self.client.post(
            API + "/enrol", json=enrol_body(self.pairing_code(), key.csr_pem, name)
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        return body["node_id"], body["certificate_pem"], key

    def register(self, study: Study) -> str:
        response = self.node_post("/studies", json=study.registration.model_dump(mode="json"))
        assert response.status_code in (200, 201), response.get_json()
        upload_id: str = response.get_json()["upload_id"]
        return upload_id

    def put_part(self, upload_id: str, study: Study, n: int) -> TestResponse:
        data, headers = study.encoded_part(n)
        return self.node_put(f"/uploads/{upload_id}/parts/{n}", data=data, headers=headers)

    def upload(self, study: Study) -> tuple[str, dict[str, Any]]:
        """Register, send every part and commit; return the upload id and the receipt."""
        upload_id = self.register(study)
        for n in range(len(study.parts)):
            assert self.put_part(upload_id, study, n).status_code == 200
        response = self.node_post(
            f"/uploads/{upload_id}/commit", json=study.commit.model_dump(mode="json")
        )
        assert response.status_code == 200, response.get_json()
        receipt: dict[str, Any] = response.get_json()
        return upload_id, receipt


def csrf_token(page: str) -> str:
    found = CSRF.search(page)
    assert found, page
    return found.group(1)


def sign_in(
    client: FlaskClient,
    login: str = "rahimi",
    password: str = PASSWORD,
    address: str = "192.0.2.50",
) -> TestResponse:
    """The sign-in form fetched and posted the way a browser does (its cookie, its token)."""
    environ = {"REMOTE_ADDR": address}
    form = client.get("/physician/sign-in", environ_overrides=environ)
    assert form.status_code == 200, form.get_data(as_text=True)
    token = csrf_token(form.get_data(as_text=True))
    return client.post(
        "/physician/sign-in",
        data={"login": login, "password": password, "csrf_token": token},
        environ_overrides=environ,
    )


@pytest.fixture
def hub_app(tmp_path: Path) -> Iterator[tuple[Flask, FakeClock]]:
    clock = FakeClock()
    app = create_hub(
        HubConfig(data_dir=tmp_path / "hub", admin_token=ADMIN_TOKEN, hub_name="Test hub"),
        clock=clock,
    )
    app.testing = True
    yield app, clock
    hub_of(app).close()


@pytest.fixture
def hc(hub_app: tuple[Flask, FakeClock]) -> Iterator[HubClient]:
    app, clock = hub_app
    with app.test_client() as client:
        partial = HubClient(app, client, clock, "", "", node_key())
        node_id, cert, key = partial.enrol("Test node")
        yield HubClient(app, client, clock, node_id, cert, key)


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "hub", admin_token=ADMIN_TOKEN, hub_name="Test hub") as server:
        yield server
