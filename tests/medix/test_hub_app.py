"""The reference hub's routes through Flask's test client, acting as an enrolled node by
putting its certificate where cheroot would (`SSL_CLIENT_CERT`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from medix.hub.access import CODE_ATTEMPT_WINDOW_S
from medix.hub.codes import normalise_code
from medix.hub.commands import REDELIVER_AFTER_S
from medix.models import (
    CommandBatch,
    EnrolResponse,
    HeartbeatResponse,
    PartAck,
    Policy,
    Receipt,
    Registration,
)
from medix.receipts import verify_receipt
from tests.fakes import self_signed_pem
from tests.medix.conftest import API, HubClient, sign_in
from tests.medix.nodekit import (
    BIRTH_DATE,
    MEDIS_CODE,
    PART_SIZE,
    PHYSICIAN,
    enrol_body,
    make_study,
    node_key,
)

PROBLEM = "application/problem+json"


def problem(response: TestResponse, status: int) -> dict[str, object]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, object] = response.get_json()
    assert body["status"] == status and body["title"]
    return body


def heartbeat_body(policy_version: int = 0) -> dict[str, object]:
    return {
        "software_version": "0.1.0",
        "policy_version": policy_version,
        "health": "ok",
        "queue": {"studies_waiting": 2, "oldest_waiting_s": 30.5, "bytes_waiting": 1000},
    }


def foreign_cert_pem() -> str:
    """A self-signed client certificate the hub never issued."""
    return self_signed_pem(ec.generate_private_key(ec.SECP256R1()), time.time() + 86400)


# -- enrolment and identity ------------------------------------------------------------------


def test_enrolment_returns_certificate_ca_and_policy(hc: HubClient) -> None:
    key = node_key()
    response = hc.client.post(API + "/enrol", json=enrol_body(hc.pairing_code(), key.csr_pem))
    assert response.status_code == 200
    answer = EnrolResponse.model_validate(response.get_json())
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == answer.node_id
    assert answer.ca_pem == hc.hub.ca.ca_pem
    assert answer.policy.version == 0
    nodes = hc.admin_get("/nodes").get_json()["nodes"]
    assert {n["id"] for n in nodes} == {hc.node_id, answer.node_id}


def test_pairing_code_is_single_use_and_case_insensitive(hc: HubClient) -> None:
    code = hc.pairing_code()
    typed = code.lower().replace("-", " ")
    first = hc.client.post(API + "/enrol", json=enrol_body(typed, node_key().csr_pem))
    assert first.status_code == 200
    again = hc.client.post(API + "/enrol", json=enrol_body(code, node_key().csr_pem))
    problem(again, 403)


def test_pairing_code_expires(hc: HubClient) -> None:
    code = hc.pairing_code()
    hc.clock.advance(hc.hub.config.pairing_code_ttl_s + 1)
    problem(hc.client.post(API + "/enrol", json=enrol_body(code, node_key().csr_pem)), 403)


def test_wrong_pairing_codes_are_rate_limited_per_address(hc: HubClient) -> None:
    csr = node_key().csr_pem
    attacker = {"REMOTE_ADDR": "10.9.9.9"}
    for _ in range(5):
        response = hc.client.post(
            API + "/enrol", json=enrol_body("WRONG-CODE-1", csr), environ_overrides=attacker
        )
        problem(response, 403)
    good = hc.pairing_code()
    locked = hc.client.post(API + "/enrol", json=enrol_body(good, csr), environ_overrides=attacker)
    assert problem(locked, 429)
    assert locked.headers["Retry-After"]
    # Another address is not affected, and ten minutes later the first is free again.
    assert hc.client.post(API + "/enrol", json=enrol_body(good, csr)).status_code == 200
    hc.clock.advance(601)
    again = hc.client.post(
        API + "/enrol", json=enrol_body(hc.pairing_code(), csr), environ_overrides=attacker
    )
    assert again.status_code == 200


def test_bad_csr_is_refused_without_spending_the_code(hc: HubClient) -> None:
    code = hc.pairing_code()
    garbage = (
        "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 80 + "\n-----END CERTIFICATE REQUEST-----"
    )
    problem(hc.client.post(API + "/enrol", json=enrol_body(code, garbage)), 422)
    # A CSR whose signature does not match its key.
    good = x509.load_pem_x509_csr(node_key().csr_pem.encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    body = problem(hc.client.post(API + "/enrol", json=enrol_body(code, tampered.decode())), 422)
    assert "signature" in str(body["detail"])
    assert (
        hc.client.post(API + "/enrol", json=enrol_body(code, node_key().csr_pem)).status_code == 200
    )


def test_enrol_body_errors(hc: HubClient) -> None:
    url = API + "/enrol"
    problem(hc.client.post(url, data="{not json", content_type="application/json"), 400)
    problem(hc.client.post(url, json={"pairing_code": "ABCDEF"}), 422)
    problem(hc.client.post(url, data="x", content_type="text/plain"), 415)
    body = enrol_body("ABCDEFGH", node_key().csr_pem)
    body["extra"] = "field"
    problem(hc.client.post(url, json=body), 422)
    huge = json.dumps({"pairing_code": "A" * (17 << 20)})
    problem(hc.client.post(url, data=huge, content_type="application/json"), 413)


def test_node_requests_need_a_known_unrevoked_certificate(hc: HubClient) -> None:
    body = heartbeat_body()
    problem(hc.client.post(API + "/heartbeat", json=body), 401)
    for pem in (foreign_cert_pem(), "not a certificate"):
        response = hc.client.post(
            API + "/heartbeat", json=body, environ_overrides={"SSL_CLIENT_CERT": pem}
        )
        problem(response, 401)
    assert hc.node_post("/heartbeat", json=body).status_code == 200
    revoke = hc.client.post(f"/admin/nodes/{hc.node_id}/revoke", headers=hc.admin_headers())
    assert revoke.status_code == 204
    assert "revoked" in str(problem(hc.node_post("/heartbeat", json=body), 401)["title"]).lower()
    problem(hc.admin_post("/nodes/node-nobody/revoke"), 404)


def test_unknown_routes_and_methods_are_problems(hc: HubClient) -> None:
    problem(hc.node_get("/nothing-here"), 404)
    response = hc.node_get("/heartbeat")
    problem(response, 405)
    assert "POST" in response.headers["Allow"]


# -- heartbeat and policy --------------------------------------------------------------------


def test_heartbeat_records_and_offers_newer_policy(hc: HubClient) -> None:
    answer = HeartbeatResponse.model_validate(
        hc.node_post("/heartbeat", json=heartbeat_body()).get_json()
    )
    assert answer.policy is None and answer.hub_time == hc.clock.time()
    policy = Policy(version=3, code_max_attempts=4, retention_days=10)
    published = hc.admin_post("/policy", json=policy.model_dump(mode="json"))
    assert published.status_code == 200
    answer = HeartbeatResponse.model_validate(
        hc.node_post("/heartbeat", json=heartbeat_body()).get_json()
    )
    assert answer.policy == policy
    current = HeartbeatResponse.model_validate(
        hc.node_post("/heartbeat", json=heartbeat_body(3)).get_json()
    )
    assert current.policy is None
    node = next(n for n in hc.admin_get("/nodes").get_json()["nodes"] if n["id"] == hc.node_id)
    assert node["health"] == "ok" and node["policy_version"] == 3
    assert node["queue"]["studies_waiting"] == 2
    assert hc.admin_get("/policy").get_json()["version"] == 3


def test_policy_version_must_increase(hc: HubClient) -> None:
    assert hc.admin_post("/policy", json={"version": 2}).status_code == 200
    problem(hc.admin_post("/policy", json={"version": 2}), 409)
    problem(hc.admin_post("/policy", json={"version": 1}), 409)
    problem(hc.admin_post("/policy", json={"version": 5, "retention_days": -1}), 422)
    problem(hc.node_post("/heartbeat", json={**heartbeat_body(), "health": "x" * 40}), 422)


# -- registration ----------------------------------------------------------------------------


def test_registration_is_idempotent_and_conflicts_on_a_different_body(hc: HubClient) -> None:
    study = make_study()
    body = study.registration.model_dump(mode="json")
    first = hc.node_post("/studies", json=body)
    assert first.status_code == 201
    upload_id = first.get_json()["upload_id"]
    assert first.headers["Location"] == f"{API}/uploads/{upload_id}"
    second = hc.node_post("/studies", json=body)
    assert second.status_code == 200 and second.get_json()["upload_id"] == upload_id
    changed = {**body, "study_description": "CHEST LAT"}
    assert "already registered" in str(
        problem(hc.node_post("/studies", json=changed), 409)["detail"]
    )
    # A new revision is a new upload.
    revised = hc.node_post("/studies", json={**body, "revision": 1})
    assert revised.status_code == 201 and revised.get_json()["upload_id"] != upload_id


def test_registration_validation(hc: HubClient) -> None:
    body = make_study().registration.model_dump(mode="json")
    problem(hc.node_post("/studies", json={**body, "parts": body["parts"] + 1}), 422)
    problem(hc.node_post("/studies", json={**body, "study_uid": "1.02.3"}), 422)
    problem(hc.node_post("/studies", json={**body, "medis_code": "K7QM2XHP9RT0"}), 422)
    problem(hc.node_post("/studies", json={**body, "part_size": 1000}), 422)


def test_registration_too_large_for_the_hub(tmp_path: Path) -> None:
    from medix.hub.app import create_hub, hub_of
    from medix.hub.core import HubConfig
    from tests.fakes import FakeClock
    from tests.medix.conftest import ADMIN_TOKEN

    app = create_hub(
        HubConfig(data_dir=tmp_path / "small", admin_token=ADMIN_TOKEN, max_stream_bytes=1000),
        clock=FakeClock(),
    )
    try:
        with app.test_client() as client:
            small = HubClient(app, client, FakeClock(), "", "", node_key())
            _, cert, _ = small.enrol()
            response = client.post(
                API + "/studies",
                json=make_study().registration.model_dump(mode="json"),
                environ_overrides={"SSL_CLIENT_CERT": cert},
            )
            problem(response, 413)
    finally:
        hub_of(app).close()


def test_uploads_of_other_nodes_are_invisible(hc: HubClient) -> None:
    upload_id = hc.register(make_study())
    _, other_cert, _ = hc.enrol("Other")
    other = {"SSL_CLIENT_CERT": other_cert}
    problem(hc.client.get(f"{API}/uploads/{upload_id}", environ_overrides=other), 404)
    problem(hc.node_get("/uploads/nope"), 404)


# -- parts -----------------------------------------------------------------------------------


def test_parts_zstd_and_identity_resume_and_resend(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    assert len(study.parts) == 4
    ack = PartAck.model_validate(hc.put_part(upload_id, study, 0).get_json())  # zstd
    assert ack == PartAck(part=0, received_parts=1)
    assert hc.put_part(upload_id, study, 3).status_code == 200  # identity, the short last part
    state = Registration.model_validate(hc.node_get(f"/uploads/{upload_id}").get_json())
    assert state.state == "open" and state.received_parts == (0, 3) and state.receipt is None
    again = PartAck.model_validate(hc.put_part(upload_id, study, 0).get_json())
    assert again.received_parts == 2
    stored = Path(hc.hub.store.part_path(upload_id, 0)).read_bytes()
    assert stored == study.parts[0]


def test_part_errors(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    url = f"/uploads/{upload_id}/parts/"
    data = study.parts[1]
    headers = study.part_headers(1)
    problem(hc.node_put(url + "1", data=data), 400)  # no hash header
    bad_hash = {**headers, "X-Medix-Part-SHA256": "0" * 64}
    assert "hashes to" in str(
        problem(hc.node_put(url + "1", data=data, headers=bad_hash), 422)["detail"]
    )
    short = data[:1000]
    problem(hc.node_put(url + "1", data=short, headers=study.part_headers(1, short)), 422)
    problem(hc.node_put(url + "9", data=data, headers=headers), 422)
    problem(hc.node_put(url + "1", data=data, headers={**headers, "Content-Encoding": "gzip"}), 415)
    garbage = {**headers, "Content-Encoding": "zstd"}
    problem(hc.node_put(url + "1", data=b"not zstd at all", headers=garbage), 400)
    too_big = b"\0" * (PART_SIZE * 2)
    problem(hc.node_put(url + "1", data=too_big, headers=study.part_headers(1, too_big)), 413)
    problem(hc.node_put("/uploads/nope/parts/0", data=data, headers=headers), 404)
    assert (
        Registration.model_validate(hc.node_get(f"/uploads/{upload_id}").get_json()).received_parts
        == ()
    )


def test_decompression_bomb_is_refused_without_inflating(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    assert len(bomb) < 10000
    headers = {**study.part_headers(0), "Content-Encoding": "zstd"}
    body = problem(hc.node_put(f"/uploads/{upload_id}/parts/0", data=bomb, headers=headers), 413)
    assert "part_size" in str(body["detail"])


# -- commit and receipt ----------------------------------------------------------------------


def test_full_upload_commit_receipt_and_stored_files(hc: HubClient) -> None:
    study = make_study()
    upload_id, receipt_body = hc.upload(study)
    receipt = Receipt.model_validate(receipt_body)
    assert verify_receipt(receipt, hc.hub.ca.ca_pem)
    assert receipt.upload_id == upload_id and receipt.medis_code == MEDIS_CODE
    assert receipt.instance_count == 4 and receipt.stream_sha256 == study.commit.stream_sha256
    assert not verify_receipt(receipt.model_copy(update={"instance_count": 5}), hc.hub.ca.ca_pem)
    state = Registration.model_validate(hc.node_get(f"/uploads/{upload_id}").get_json())
    assert state.state == "committed" and state.receipt == receipt
    # Files split back out, named by the UID's hash, with the manifest beside them.
    study_dir = hc.hub.store.study_dir(upload_id)
    for uid, data in study.instances.items():
        name = hashlib.sha256(uid.encode()).hexdigest() + ".dcm"
        assert (study_dir / name).read_bytes() == data
        stored = hc.admin_get(f"/studies/{upload_id}/instances/{uid}")
        assert stored.mimetype == "application/dicom"
        assert hashlib.sha256(stored.data).digest() == hashlib.sha256(data).digest()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert manifest["commit"]["stream_sha256"] == study.commit.stream_sha256
    assert not hc.hub.store.part_dir(upload_id).exists()
    problem(hc.admin_get(f"/studies/{upload_id}/instances/1.2.3"), 404)


def test_repeated_commit_returns_the_same_receipt(hc: HubClient) -> None:
    study = make_study()
    upload_id, receipt = hc.upload(study)
    commit = study.commit.model_dump(mode="json")
    again = hc.node_post(f"/uploads/{upload_id}/commit", json=commit)
    assert again.status_code == 200 and again.get_json() == receipt
    # The same registration now answers with the receipt too.
    registered = hc.node_post("/studies", json=study.registration.model_dump(mode="json"))
    assert registered.status_code == 200 and registered.get_json()["receipt"] == receipt
    # Re-sending a held part after the commit is harmless; another body is not.
    assert hc.put_part(upload_id, study, 1).status_code == 200
    other = b"x" * PART_SIZE
    problem(
        hc.node_put(
            f"/uploads/{upload_id}/parts/1", data=other, headers=study.part_headers(1, other)
        ),
        409,
    )
    different = {**commit, "stream_sha256": "1" * 64}
    problem(hc.node_post(f"/uploads/{upload_id}/commit", json=different), 409)


def test_commit_with_missing_parts_lists_them(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    hc.put_part(upload_id, study, 0)
    hc.put_part(upload_id, study, 2)
    body = problem(
        hc.node_post(f"/uploads/{upload_id}/commit", json=study.commit.model_dump(mode="json")), 409
    )
    assert body["detail"] == "missing parts: 1, 3"


def test_corrupted_part_fails_the_commit(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    for n in (0, 2, 3):
        hc.put_part(upload_id, study, n)
    # A part damaged before it was hashed: its own hash holds, the manifest's do not.
    damaged = bytearray(study.parts[1])
    damaged[100] ^= 0x55
    response = hc.node_put(
        f"/uploads/{upload_id}/parts/1",
        data=bytes(damaged),
        headers=study.part_headers(1, bytes(damaged)),
    )
    assert response.status_code == 200
    commit = study.commit.model_dump(mode="json")
    body = problem(hc.node_post(f"/uploads/{upload_id}/commit", json=commit), 422)
    assert "hashes to" in str(body["detail"])
    assert not hc.hub.store.study_dir(upload_id).exists()
    # Sending the good part again repairs the upload.
    hc.put_part(upload_id, study, 1)
    assert hc.node_post(f"/uploads/{upload_id}/commit", json=commit).status_code == 200


def test_manifest_must_match_the_registration_and_tile_the_stream(hc: HubClient) -> None:
    study = make_study()
    upload_id = hc.register(study)
    for n in range(len(study.parts)):
        hc.put_part(upload_id, study, n)
    commit = study.commit.model_dump(mode="json")
    url = f"/uploads/{upload_id}/commit"
    instances = commit["instances"]
    problem(hc.node_post(url, json={**commit, "instances": instances[:3]}), 422)
    gap = [dict(i) for i in instances]
    gap[1]["offset"] += 1
    problem(hc.node_post(url, json={**commit, "instances": gap}), 422)
    twice = [dict(i) for i in instances]
    twice[1]["sop_instance_uid"] = twice[0]["sop_instance_uid"]
    problem(hc.node_post(url, json={**commit, "instances": twice}), 422)
    assert "stream hashes" in str(
        problem(hc.node_post(url, json={**commit, "stream_sha256": "2" * 64}), 422)["detail"]
    )
    problem(hc.node_post(url, json={"instances": [], "stream_sha256": "2" * 64}), 422)
    assert hc.node_post(url, json=commit).status_code == 200


# -- commands --------------------------------------------------------------------------------


def test_commands_are_delivered_once_then_again_without_a_result(hc: HubClient) -> None:
    assert hc.node_get("/commands?wait=0").get_json() == {"commands": []}
    queued = hc.admin_post(
        f"/nodes/{hc.node_id}/commands", json={"type": "locate", "args": {"seconds": 30}}
    )
    assert queued.status_code == 201
    command_id = queued.get_json()["id"]
    beat = HeartbeatResponse.model_validate(
        hc.node_post("/heartbeat", json=heartbeat_body()).get_json()
    )
    assert beat.commands_waiting == 1
    batch = CommandBatch.model_validate(hc.node_get("/commands?wait=5").get_json())
    assert [(c.id, c.type, c.args) for c in batch.commands] == [
        (command_id, "locate", {"seconds": 30})
    ]
    assert hc.node_get("/commands").get_json() == {"commands": []}
    hc.clock.advance(REDELIVER_AFTER_S + 1)
    redelivered = CommandBatch.model_validate(hc.node_get("/commands").get_json())
    assert [c.id for c in redelivered.commands] == [command_id]
    result = hc.node_post(f"/commands/{command_id}/result", json={"ok": True, "result": {}})
    assert result.status_code == 204
    hc.clock.advance(REDELIVER_AFTER_S + 1)
    assert hc.node_get("/commands").get_json() == {"commands": []}
    listed = hc.admin_get(f"/nodes/{hc.node_id}/commands").get_json()["commands"]
    assert listed[0]["state"] == "done" and listed[0]["ok"] is True


def test_long_poll_wakes_when_a_command_is_queued(hc: HubClient) -> None:
    timer = threading.Timer(0.2, hc.hub.queue_command, (hc.node_id, "diagnostics", {}))
    timer.start()
    try:
        batch = CommandBatch.model_validate(hc.node_get("/commands?wait=10").get_json())
    finally:
        timer.join()
    assert [c.type for c in batch.commands] == ["diagnostics"]


def test_command_errors(hc: HubClient) -> None:
    problem(hc.node_get("/commands?wait=soon"), 400)
    problem(hc.node_get("/commands?wait=-1"), 400)
    url = f"/nodes/{hc.node_id}/commands"
    problem(hc.admin_post(url, json={"type": "reboot", "args": {}}), 422)
    problem(hc.admin_post(url, json={"type": "download", "args": {"StudyInstanceUID": "1.2"}}), 422)
    problem(hc.admin_post(url, json={"type": "diagnostics", "args": {"x": 1}}), 422)
    problem(hc.admin_post("/nodes/node-nobody/commands", json={"type": "diagnostics"}), 404)
    problem(hc.admin_get("/nodes/node-nobody/commands"), 404)
    problem(hc.node_post("/commands/nope/result", json={"ok": True}), 404)
    # Another node cannot answer this node's command.
    command_id = hc.hub.queue_command(hc.node_id, "diagnostics", {})
    _, other_cert, _ = hc.enrol("Other")
    response = hc.client.post(
        f"{API}/commands/{command_id}/result",
        json={"ok": False, "error": "not mine"},
        environ_overrides={"SSL_CLIENT_CERT": other_cert},
    )
    problem(response, 404)
    problem(hc.node_post(f"/commands/{command_id}/result", json={"ok": "maybe"}), 422)


def test_download_command_args_use_the_seed_names(hc: HubClient) -> None:
    args = {
        "StudyInstanceUID": "1.2.3",
        "WebhookUri": "https://hub.example/webhook/v1/pacs/acme",
        "WebhookHeaders": {"authorization": "t", "userid": "u", "kcode": MEDIS_CODE},
    }
    response = hc.admin_post(
        f"/nodes/{hc.node_id}/commands", json={"type": "download", "args": args}
    )
    assert response.status_code == 201
    batch = CommandBatch.model_validate(hc.node_get("/commands").get_json())
    assert batch.commands[0].args == args


# -- admin -----------------------------------------------------------------------------------


def test_admin_needs_the_bearer_token(hc: HubClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = hc.client.get("/admin/nodes", headers=headers)
        problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_admin_studies_lists_codes_counts_and_receipts(hc: HubClient) -> None:
    committed = make_study()
    upload_id, receipt = hc.upload(committed)
    open_id = hc.register(make_study(study_number=2))
    studies = {s["upload_id"]: s for s in hc.admin_get("/studies").get_json()["studies"]}
    assert studies[upload_id]["medis_code"] == MEDIS_CODE
    assert studies[upload_id]["stored_instances"] == 4 and studies[upload_id]["received_parts"] == 4
    assert studies[upload_id]["receipt"] == receipt and studies[upload_id]["state"] == "committed"
    assert studies[open_id]["state"] == "open" and studies[open_id]["receipt"] is None


# -- patient page ----------------------------------------------------------------------------


def patient_post(
    client: FlaskClient, code: str, birth: str, address: str = "192.0.2.10"
) -> TestResponse:
    return client.post(
        "/patient",
        data={"code": code, "birth_date": birth},
        environ_overrides={"REMOTE_ADDR": address},
    )


def download(client: FlaskClient, page: str) -> dict[str, bytes]:
    link = re.search(r'href="(/download/[^"]+)"', page)
    assert link, page
    response = client.get(link.group(1))
    try:
        assert response.status_code == 200 and response.mimetype == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    finally:
        response.close()


def test_patient_form_is_self_contained(hc: HubClient) -> None:
    response = hc.client.get("/patient")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'name="code"' in page and 'name="birth_date"' in page
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert hc.client.get("/").status_code == 200


def test_patient_sees_the_study_with_code_and_birth_date(hc: HubClient) -> None:
    study = make_study()
    hc.upload(study)
    typed = "k7qm-2xhp 9rtc"
    assert normalise_code(typed) == MEDIS_CODE
    response = patient_post(hc.client, typed, "1980-01-31")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "CHEST PA" in page and "2025-03-01" in page and ">4<" in page
    files = download(hc.client, page)
    assert len(files) == 4
    for uid, data in study.instances.items():
        assert (
            files[f"{study.registration.study_uid}/{study.registration.study_uid}.1/{uid}.dcm"]
            == data
        )


def test_patient_code_alone_is_not_enough(hc: HubClient) -> None:
    hc.upload(make_study())
    no_birth = make_study(study_number=2, medis_code="22222222222A", birth_date="")
    hc.upload(no_birth)
    assert patient_post(hc.client, MEDIS_CODE, "19800130").status_code == 403
    assert patient_post(hc.client, "22222222222A", "").status_code == 400
    assert patient_post(hc.client, "22222222222A", "19800131").status_code == 403
    # An upload not yet committed is not shown either.
    hc.register(make_study(study_number=3, medis_code="33333333333B"))
    assert patient_post(hc.client, "33333333333B", BIRTH_DATE).status_code == 403


def test_patient_tries_are_limited_per_code(hc: HubClient) -> None:
    hc.admin_post("/policy", json={"version": 1, "code_max_attempts": 3})
    hc.upload(make_study())
    for attempt in range(3):
        response = patient_post(hc.client, MEDIS_CODE, "19991231", f"192.0.2.{attempt}")
        assert response.status_code == 403
        assert f"{2 - attempt} tries left" in response.get_data(as_text=True)
    locked = patient_post(hc.client, MEDIS_CODE, BIRTH_DATE, "192.0.2.99")
    assert locked.status_code == 429 and locked.headers["Retry-After"]
    page = locked.get_data(as_text=True)
    assert "Too many wrong tries" in page and "<form" not in page
    hc.clock.advance(CODE_ATTEMPT_WINDOW_S + 1)
    assert patient_post(hc.client, MEDIS_CODE, BIRTH_DATE, "192.0.2.99").status_code == 200


def test_patient_tries_are_limited_per_address(hc: HubClient) -> None:
    hc.admin_post("/policy", json={"version": 1, "code_max_attempts": 2})
    hc.upload(make_study())
    assert patient_post(hc.client, "22222222222A", BIRTH_DATE, "198.51.100.7").status_code == 403
    assert patient_post(hc.client, "33333333333B", BIRTH_DATE, "198.51.100.7").status_code == 403
    assert patient_post(hc.client, MEDIS_CODE, BIRTH_DATE, "198.51.100.7").status_code == 429
    assert patient_post(hc.client, MEDIS_CODE, BIRTH_DATE, "198.51.100.8").status_code == 200


def test_patient_codes_expire(hc: HubClient) -> None:
    hc.admin_post("/policy", json={"version": 1, "code_expiry_days": 10})
    hc.upload(make_study())
    assert patient_post(hc.client, MEDIS_CODE, BIRTH_DATE).status_code == 200
    hc.clock.advance(11 * 86400)
    response = patient_post(hc.client, MEDIS_CODE, BIRTH_DATE)
    assert response.status_code == 410 and "expired" in response.get_data(as_text=True)


def test_download_links_are_signed_and_expire(hc: HubClient) -> None:
    hc.upload(make_study())
    page = patient_post(hc.client, MEDIS_CODE, BIRTH_DATE).get_data(as_text=True)
    link = re.search(r'href="(/download/[^"]+)"', page)
    assert link
    forged = link.group(1)[:-4] + "0000"
    response = hc.client.get(forged)
    assert response.status_code == 404 and response.mimetype == "text/html"
    hc.clock.advance(3601)
    assert hc.client.get(link.group(1)).status_code == 410


# -- inbox and webhook -----------------------------------------------------------------------


def test_inbox_lists_the_physicians_studies(hc: HubClient) -> None:
    hc.upload(make_study())
    hc.upload(make_study(study_number=2, medis_code="22222222222A", physician="Other^Doc"))
    hc.add_physician("rahimi", "rahimi^ALI")
    hc.add_physician("other", "Other^Doc")
    hc.add_physician("nobody", "Nobody")
    assert sign_in(hc.client, "rahimi").status_code == 303
    response = hc.client.get("/inbox")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "K7QM-2XHP-9RTC" in page and "2222-2222-222A" not in page
    assert "Sara Karimi" in page
    assert len(download(hc.client, page)) == 4
    sign_in(hc.client, "other")
    assert "2222-2222-222A" in hc.client.get("/inbox").get_data(as_text=True)
    sign_in(hc.client, "nobody")
    empty = hc.client.get("/inbox")
    assert empty.status_code == 200 and "No studies" in empty.get_data(as_text=True)


def test_inbox_match_uses_the_pn_text_as_given(hc: HubClient) -> None:
    hc.upload(make_study(physician=PHYSICIAN))
    hc.add_physician("rahimi", "Ali Rahimi")
    sign_in(hc.client, "rahimi")
    assert "K7QM" not in hc.client.get("/inbox").get_data(as_text=True)


def test_webhook_records_progress(hc: HubClient) -> None:
    body = {
        "Status": "2",
        "headers": {"authorization": "tok", "userid": "u1", "kcode": MEDIS_CODE},
        "File": "",
    }
    response = hc.client.post("/webhook/v1/pacs/acme", json=body, headers={"X-Trace": "t1"})
    assert response.status_code == 204
    entries = hc.admin_get("/webhooks").get_json()["webhooks"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["vendor"] == "acme" and entry["body"] == body
    assert entry["headers"]["X-Trace"] == "t1" and entry["received_at"] == hc.clock.time()


def test_webhook_validation(hc: HubClient) -> None:
    url = "/webhook/v1/pacs/acme"
    good = {"Status": "7", "headers": {}, "File": "https://hub/f.zip"}
    problem(hc.client.post(url, json={**good, "Status": "9"}), 422)
    problem(hc.client.post(url, json={**good, "Status": "seven"}), 422)
    problem(hc.client.post(url, json={"headers": {}}), 422)
    problem(hc.client.post(url, data="{", content_type="application/json"), 400)
    problem(hc.client.post("/webhook/v1/pacs/..evil", json=good), 404)
    problem(hc.client.post(url, json={**good, "File": "x" * 70000}), 413)
    assert hc.admin_get("/webhooks").get_json() == {"webhooks": []}


@pytest.mark.parametrize("status", ["-4", "0", "10"])
def test_webhook_accepts_every_status(hc: HubClient, status: str) -> None:
    response = hc.client.post("/webhook/v1/pacs/acme", json={"Status": status, "headers": {}})
    assert response.status_code == 204
