"""The reference hub for real: HTTPS on loopback, client certificates, `requests` as the node."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medix.hub.server import HubServer
from medix.models import CommandBatch, Policy, Receipt, Registration
from medix.receipts import verify_receipt
from tests.medix.conftest import ADMIN_TOKEN, API, PASSWORD, csrf_token
from tests.medix.nodekit import BIRTH_DATE, MEDIS_CODE, Study, enrol_body, make_study, node_key

TIMEOUT = 10


@dataclass
class Node:
    """A node's HTTPS session. `verify` goes with every request, never on the session:
    requests lets REQUESTS_CA_BUNDLE from the environment override `Session.verify`."""

    node_id: str
    session: requests.Session
    url: str
    verify: str

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(
            method, self.url + API + path, verify=self.verify, timeout=TIMEOUT, **kwargs
        )

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put_part(
        self, upload_id: str, study: Study, n: int, data: bytes | None = None
    ) -> requests.Response:
        if data is None:
            body, headers = study.encoded_part(n)
        else:
            body, headers = data, study.part_headers(n, data)
        return self.request("PUT", f"/uploads/{upload_id}/parts/{n}", data=body, headers=headers)


def enrol(server: HubServer, directory: Path, code: str | None = None) -> tuple[str, str, str]:
    """Enrol over HTTPS without a client certificate; return node id and cert/key paths."""
    key = node_key()
    response = requests.post(
        server.url + API + "/enrol",
        json=enrol_body(code or server.new_pairing_code(), key.csr_pem),
        verify=str(server.ca_pem_path),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    cert_path, key_path = key.write(directory, body["certificate_pem"])
    return body["node_id"], cert_path, key_path


@pytest.fixture
def node(hub_server: HubServer, tmp_path: Path) -> Iterator[Node]:
    node_id, cert_path, key_path = enrol(hub_server, tmp_path / "node")
    with requests.Session() as session:
        session.cert = (cert_path, key_path)
        yield Node(node_id, session, hub_server.url, str(hub_server.ca_pem_path))


def admin(server: HubServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        server.url + "/admin" + path,
        headers={"Authorization": f"Bearer {server.admin_token}"},
        verify=str(server.ca_pem_path),
        timeout=TIMEOUT,
        **kwargs,
    )


def other_ca_client_cert(directory: Path) -> tuple[str, str]:
    """A client certificate with clientAuth, signed by a CA the hub does not know."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue-node")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "rogue.crt", directory / "rogue.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


# -- enrolment and TLS identity --------------------------------------------------------------


def test_enrolled_node_uses_its_certificate(hub_server: HubServer, node: Node) -> None:
    assert hub_server.url.startswith("https://127.0.0.1:") and hub_server.port > 0
    beat = node.post(
        "/heartbeat",
        json={
            "software_version": "0.1.0",
            "policy_version": 0,
            "health": "ok",
            "queue": {"studies_waiting": 0, "oldest_waiting_s": 0, "bytes_waiting": 0},
        },
    )
    assert beat.status_code == 200 and beat.json()["policy"] is None
    assert [n["id"] for n in hub_server.nodes()] == [node.node_id]
    # Without the client certificate the same request is refused.
    anonymous = requests.post(
        hub_server.url + API + "/heartbeat",
        json={},
        verify=str(hub_server.ca_pem_path),
        timeout=TIMEOUT,
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"


def test_wrong_pairing_codes_then_rate_limit_and_no_reuse(
    hub_server: HubServer, tmp_path: Path
) -> None:
    url = hub_server.url + API + "/enrol"
    verify = str(hub_server.ca_pem_path)
    csr = node_key().csr_pem
    code = hub_server.new_pairing_code()
    enrol(hub_server, tmp_path / "first", code)
    reused = requests.post(url, json=enrol_body(code, csr), verify=verify, timeout=TIMEOUT)
    assert reused.status_code == 403
    for _ in range(4):
        wrong = requests.post(
            url, json=enrol_body("NOPE-NOPE-NOPE", csr), verify=verify, timeout=TIMEOUT
        )
        assert wrong.status_code == 403
    fresh = hub_server.new_pairing_code()
    limited = requests.post(url, json=enrol_body(fresh, csr), verify=verify, timeout=TIMEOUT)
    assert limited.status_code == 429 and limited.json()["status"] == 429


def test_client_certificate_from_another_ca_is_refused(
    hub_server: HubServer, tmp_path: Path
) -> None:
    cert = other_ca_client_cert(tmp_path / "rogue")
    try:
        response = requests.get(
            hub_server.url + API + "/commands",
            cert=cert,
            verify=str(hub_server.ca_pem_path),
            timeout=TIMEOUT,
        )
    except requests.exceptions.ConnectionError:
        return  # refused in the TLS handshake (SSLError is a ConnectionError)
    assert response.status_code == 401


def test_hub_certificate_verifies_against_the_ca_only(hub_server: HubServer) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(hub_server.url + "/patient", timeout=TIMEOUT)
    ok = requests.get(
        hub_server.url + "/patient", verify=str(hub_server.ca_pem_path), timeout=TIMEOUT
    )
    assert ok.status_code == 200


# -- uploads ---------------------------------------------------------------------------------


def test_full_upload_resume_and_receipt(hub_server: HubServer, node: Node) -> None:
    study = make_study()
    registered = node.post("/studies", json=study.registration.model_dump(mode="json"))
    assert registered.status_code == 201
    upload_id = registered.json()["upload_id"]
    for n in (0, 1):  # zstd, identity; then the connection "drops"
        assert node.put_part(upload_id, study, n).status_code == 200
    commit = study.commit.model_dump(mode="json")
    missing = node.post(f"/uploads/{upload_id}/commit", json=commit)
    assert missing.status_code == 409 and missing.json()["detail"] == "missing parts: 2, 3"
    state = Registration.model_validate(node.get(f"/uploads/{upload_id}").json())
    assert state.received_parts == (0, 1)
    for n in range(len(study.parts)):
        if n not in state.received_parts:
            assert node.put_part(upload_id, study, n).status_code == 200
    committed = node.post(f"/uploads/{upload_id}/commit", json=commit)
    assert committed.status_code == 200
    receipt = Receipt.model_validate(committed.json())
    assert verify_receipt(receipt, hub_server.ca_pem_path.read_text())
    again = node.post(f"/uploads/{upload_id}/commit", json=commit)
    assert Receipt.model_validate(again.json()) == receipt
    for uid, data in study.instances.items():
        stored = hub_server.instance_bytes(upload_id, uid)
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
        over_http = admin(hub_server, "GET", f"/studies/{upload_id}/instances/{uid}")
        assert over_http.content == data
    [listed] = hub_server.studies()
    assert listed["medis_code"] == MEDIS_CODE and listed["receipt"] == committed.json()


def test_corrupted_part_is_refused_at_commit(hub_server: HubServer, node: Node) -> None:
    study = make_study(study_number=5)
    upload_id = node.post("/studies", json=study.registration.model_dump(mode="json")).json()[
        "upload_id"
    ]
    for n in range(len(study.parts)):
        node.put_part(upload_id, study, n)
    bad = bytearray(study.parts[2])
    bad[7] ^= 1
    assert node.put_part(upload_id, study, 2, bytes(bad)).status_code == 200
    commit = node.post(f"/uploads/{upload_id}/commit", json=study.commit.model_dump(mode="json"))
    assert commit.status_code == 422


# -- pages, webhook, commands ----------------------------------------------------------------


def test_patient_inbox_and_webhook_over_https(hub_server: HubServer, node: Node) -> None:
    study = make_study()
    upload_id = node.post("/studies", json=study.registration.model_dump(mode="json")).json()[
        "upload_id"
    ]
    for n in range(len(study.parts)):
        node.put_part(upload_id, study, n)
    node.post(f"/uploads/{upload_id}/commit", json=study.commit.model_dump(mode="json"))
    verify = str(hub_server.ca_pem_path)
    with requests.Session() as browser:
        wrong = browser.post(
            hub_server.url + "/patient",
            data={"code": MEDIS_CODE, "birth_date": "2000-01-01"},
            verify=verify,
            timeout=TIMEOUT,
        )
        assert wrong.status_code == 403
        page = browser.post(
            hub_server.url + "/patient",
            data={"code": "k7qm-2xhp-9rtc", "birth_date": BIRTH_DATE},
            verify=verify,
            timeout=TIMEOUT,
        )
        assert page.status_code == 200 and "CHEST PA" in page.text
        link = re.search(r'href="(/download/[^"]+)"', page.text)
        assert link
        archive = browser.get(hub_server.url + link.group(1), verify=verify, timeout=TIMEOUT)
        assert archive.status_code == 200 and archive.content[:2] == b"PK"
        hub_server.add_physician("rahimi", "RAHIMI^ALI", PASSWORD)
        closed = browser.get(hub_server.url + "/inbox", verify=verify, timeout=TIMEOUT)
        assert "K7QM-2XHP-9RTC" not in closed.text and "password" in closed.text
        signed = browser.post(
            hub_server.url + "/physician/sign-in",
            data={"login": "rahimi", "password": PASSWORD, "csrf_token": csrf_token(closed.text)},
            verify=verify,
            timeout=TIMEOUT,
        )
        assert "__Host-medix-session" in browser.cookies
        assert signed.url.endswith("/inbox") and "K7QM-2XHP-9RTC" in signed.text
        progress = {"Status": "1", "headers": {"authorization": "t", "userid": "u", "kcode": "k"}}
        posted = browser.post(
            hub_server.url + "/webhook/v1/pacs/acme", json=progress, verify=verify, timeout=TIMEOUT
        )
        assert posted.status_code == 204
    [entry] = hub_server.webhooks()
    assert entry["vendor"] == "acme" and entry["body"]["Status"] == "1"


def test_long_poll_delivers_a_command_queued_meanwhile(hub_server: HubServer, node: Node) -> None:
    empty = node.get("/commands", params={"wait": 1})
    assert empty.status_code == 200 and empty.json() == {"commands": []}
    timer = threading.Timer(0.3, hub_server.queue_command, (node.node_id, "locate", {"seconds": 5}))
    timer.start()
    try:
        batch = CommandBatch.model_validate(node.get("/commands", params={"wait": 5}).json())
    finally:
        timer.join()
    [command] = batch.commands
    assert command.type == "locate"
    result = node.post(f"/commands/{command.id}/result", json={"ok": True, "result": {}})
    assert result.status_code == 204


def test_policy_reaches_the_node_on_heartbeat(hub_server: HubServer, node: Node) -> None:
    hub_server.publish_policy(Policy(version=2, retention_days=3))
    beat = node.post(
        "/heartbeat",
        json={
            "software_version": "0.1.0",
            "policy_version": 1,
            "health": "degraded",
            "queue": {"studies_waiting": 1, "oldest_waiting_s": 9, "bytes_waiting": 9},
        },
    )
    assert beat.json()["policy"]["retention_days"] == 3
    assert admin(hub_server, "GET", "/nodes").json()["nodes"][0]["health"] == "degraded"


# -- lifecycle -------------------------------------------------------------------------------


def test_restart_keeps_ca_nodes_and_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    with HubServer(data_dir) as first:
        ca_pem = first.ca_pem_path.read_text()
        token = first.admin_token
        node_id, cert_path, key_path = enrol(first, tmp_path / "node")
        url = first.url
        first.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url + "/patient", verify=str(first.ca_pem_path), timeout=TIMEOUT)
        first.start()  # back on the same port, with the same data
        assert first.url == url
        again = requests.get(
            url + API + "/commands",
            cert=(cert_path, key_path),
            verify=str(first.ca_pem_path),
            timeout=TIMEOUT,
        )
        assert again.status_code == 200
    assert (data_dir / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "ca" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    with HubServer(data_dir) as second:
        assert second.ca_pem_path.read_text() == ca_pem and second.admin_token == token
        response = requests.get(
            second.url + API + "/commands",
            cert=(cert_path, key_path),
            verify=str(second.ca_pem_path),
            timeout=TIMEOUT,
        )
        assert response.status_code == 200
        assert [n["id"] for n in second.nodes()] == [node_id]


def test_plain_http_for_debugging(tmp_path: Path) -> None:
    with HubServer(tmp_path / "hub", tls=False, admin_token=ADMIN_TOKEN) as server:
        assert server.url.startswith("http://")
        assert requests.get(server.url + "/patient", timeout=TIMEOUT).status_code == 200
        assert requests.get(server.url + API + "/commands", timeout=TIMEOUT).status_code == 401
