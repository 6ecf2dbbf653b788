"""Download files at the reference hub, over real HTTPS: per-node enrolment secrets, files a node
prepares for a hub user (uploaded in parts, saved, downloaded by capability URL), signed
webhook progress, webhook fault injection and the redirect trap, download command args."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard

from medix.hub.errors import HubError
from medix.hub.server import HubServer
from medix.models import (
    NODE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EnrolResponse,
    FileSaved,
    FileUpload,
    webhook_signature,
)
from tests.medix.conftest import ADMIN_TOKEN, API
from tests.medix.nodekit import enrol_body, node_key

TIMEOUT = 10
PART_SIZE = 65536
METADATA_URL = "http://169.254.169.254/latest/meta-data/"


@dataclass
class FileNode:
    """An enrolled node speaking to the hub over mutual TLS."""

    enrolment: EnrolResponse
    session: requests.Session
    server: HubServer

    @property
    def node_id(self) -> str:
        return self.enrolment.node_id

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(
            method,
            self.server.url + API + path,
            verify=str(self.server.ca_pem_path),
            timeout=TIMEOUT,
            **kwargs,
        )

    def register(
        self, job_id: str = "job-1", name: str = "study.zip", part_size: int = PART_SIZE
    ) -> requests.Response:
        return self.request(
            "POST", "/files", json={"job_id": job_id, "name": name, "part_size": part_size}
        )

    def new_file(self, job_id: str = "job-1", name: str = "study.zip") -> str:
        response = self.register(job_id, name)
        assert response.status_code == 201, response.text
        return FileUpload.model_validate(response.json()).file_id

    def put(
        self,
        file_id: str,
        n: int,
        data: bytes,
        *,
        zstd: bool = False,
        sha256: str | None = None,
    ) -> requests.Response:
        headers = {
            "X-Medix-Part-SHA256": sha256 or hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "zstd" if zstd else "identity",
        }
        body = zstandard.ZstdCompressor(level=3).compress(data) if zstd else data
        return self.request("PUT", f"/files/{file_id}/parts/{n}", data=body, headers=headers)

    def put_all(self, file_id: str, data: bytes) -> None:
        for n, part in enumerate(cut(data)):
            assert self.put(file_id, n, part, zstd=n % 2 == 0).status_code == 200

    def commit(
        self,
        file_id: str,
        data: bytes,
        *,
        size: int | None = None,
        sha256: str | None = None,
        parts: int | None = None,
    ) -> requests.Response:
        body = {
            "size": len(data) if size is None else size,
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            "parts": len(cut(data)) if parts is None else parts,
        }
        return self.request("POST", f"/files/{file_id}/commit", json=body)

    def state(self, file_id: str) -> FileUpload:
        response = self.request("GET", f"/files/{file_id}")
        assert response.status_code == 200, response.text
        return FileUpload.model_validate(response.json())


def cut(data: bytes, part_size: int = PART_SIZE) -> list[bytes]:
    return [data[i : i + part_size] for i in range(0, len(data), part_size)]


def zip_like(size: int, seed: int = 1) -> bytes:
    """Bytes standing in for a study zip: a compressible head, then noise."""
    rng = random.Random(seed)
    head = b"PK\x03\x04" + b"DICOMDIR " * 2000
    return (head + rng.randbytes(size))[:size]


def enrol(server: HubServer, name: str = "Test node") -> EnrolResponse:
    key = node_key()
    response = requests.post(
        server.url + API + "/enrol",
        json=enrol_body(server.new_pairing_code(), key.csr_pem, name),
        verify=str(server.ca_pem_path),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return EnrolResponse.model_validate(response.json())


@pytest.fixture
def make_node(hub_server: HubServer, tmp_path: Path) -> Iterator[Callable[[str], FileNode]]:
    sessions: list[requests.Session] = []

    def make(name: str = "Test node") -> FileNode:
        key = node_key()
        response = requests.post(
            hub_server.url + API + "/enrol",
            json=enrol_body(hub_server.new_pairing_code(), key.csr_pem, name),
            verify=str(hub_server.ca_pem_path),
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        enrolment = EnrolResponse.model_validate(response.json())
        session = requests.Session()
        sessions.append(session)
        session.cert = key.write(tmp_path / enrolment.node_id, enrolment.certificate_pem)
        return FileNode(enrolment, session, hub_server)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def node(make_node: Callable[[str], FileNode]) -> FileNode:
    return make_node("Test node")


def admin(server: HubServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        server.url + "/admin" + path,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        verify=str(server.ca_pem_path),
        timeout=TIMEOUT,
        **kwargs,
    )


def browser_get(server: HubServer, url: str) -> requests.Response:
    """What the hub's user does with a link: no client certificate, no admin token."""
    return requests.get(url, verify=str(server.ca_pem_path), timeout=TIMEOUT)


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# -- enrolment secrets -----------------------------------------------------------------------


def test_enrolment_gives_each_node_its_own_webhook_key_and_api_token(
    hub_server: HubServer,
) -> None:
    first = enrol(hub_server, "First")
    second = enrol(hub_server, "Second")
    for enrolment in (first, second):
        assert len(base64.b64decode(enrolment.webhook_key, validate=True)) == 32
        assert len(enrolment.node_api_token) >= 43
        assert hub_server.node_api_token(enrolment.node_id) == enrolment.node_api_token
    assert first.webhook_key != second.webhook_key
    assert first.node_api_token != second.node_api_token
    listing = admin(hub_server, "GET", "/nodes")
    assert listing.status_code == 200
    for info in listing.json()["nodes"]:
        assert info["has_webhook_key"] is True and info["has_api_token"] is True
    # The admin list says that a node has secrets, never what they are.
    for secret in (first.webhook_key, first.node_api_token, second.node_api_token):
        assert secret not in listing.text
    assert first.webhook_key not in json.dumps(hub_server.nodes())
    with pytest.raises(HubError) as unknown:
        hub_server.node_api_token("node-nobody")
    assert unknown.value.status == 404


# -- files -----------------------------------------------------------------------------------


def test_file_upload_resumes_commits_once_and_serves_identical_bytes(
    hub_server: HubServer, node: FileNode
) -> None:
    data = zip_like(3 * PART_SIZE + 12345)
    parts = cut(data)
    registered = node.register("job-7", "study-1.2.3.zip")
    assert registered.status_code == 201
    assert registered.headers["Location"].startswith(API + "/files/")
    upload = FileUpload.model_validate(registered.json())
    assert upload.state == "open" and upload.received_parts == ()
    # The id is the capability in the user's link: long and random.
    assert len(upload.file_id) >= 32 and upload.file_id != node.new_file("job-8")
    file_id = upload.file_id
    assert node.put(file_id, 0, parts[0], zstd=True).json() == {"part": 0, "received_parts": 1}
    assert node.put(file_id, 1, parts[1]).json() == {"part": 1, "received_parts": 2}
    # The connection "drops"; a restarted node asks what the hub holds.
    assert node.state(file_id).received_parts == (0, 1)
    missing = assert_problem(node.commit(file_id, data), 409)
    assert missing["detail"] == "missing parts: 2, 3"
    # Re-sending a held part is harmless.
    assert node.put(file_id, 1, parts[1], zstd=True).json() == {"part": 1, "received_parts": 2}
    for n in (2, 3):
        assert node.put(file_id, n, parts[n], zstd=n == 3).status_code == 200
    committed = node.commit(file_id, data)
    assert committed.status_code == 200, committed.text
    saved = FileSaved.model_validate(committed.json())
    assert saved.file_id == file_id and saved.size == len(data)
    assert saved.sha256 == hashlib.sha256(data).hexdigest()
    assert saved.url == f"{hub_server.url}/files/{file_id}/study-1.2.3.zip"
    # Idempotent: the same commit, the same registration, the same answer.
    assert FileSaved.model_validate(node.commit(file_id, data).json()) == saved
    again = node.register("job-7", "study-1.2.3.zip")
    assert again.status_code == 200
    state = FileUpload.model_validate(again.json())
    assert state.file_id == file_id and state.state == "saved" and state.saved == saved
    assert node.state(file_id).saved == saved
    # The hub's user downloads it with nothing but the link.
    download = browser_get(hub_server, saved.url)
    assert download.status_code == 200 and download.content == data
    assert download.headers["Content-Type"] == "application/zip"
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert "study-1.2.3.zip" in download.headers["Content-Disposition"]
    assert "no-store" in download.headers["Cache-Control"]
    assert download.headers["Referrer-Policy"] == "no-referrer"
    [listed] = hub_server.files()
    assert listed["node_id"] == node.node_id and listed["job_id"] == "job-7"
    assert listed["name"] == "study-1.2.3.zip" and listed["size"] == len(data)
    assert listed["sha256"] == saved.sha256 and listed["url"] == saved.url
    assert Path(listed["path"]).read_bytes() == data
    # The parts are gone once the file is whole.
    assert not any((hub_server.data_dir / "file-parts").iterdir())
    over_admin = admin(hub_server, "GET", "/files").json()["files"]
    assert {f["state"] for f in over_admin} == {"saved", "open"}  # job-8 is still open
    # A restarted hub still serves it at the same link.
    hub_server.stop()
    hub_server.start()
    assert browser_get(hub_server, saved.url).content == data


def test_a_file_of_exactly_one_part(hub_server: HubServer, node: FileNode) -> None:
    data = zip_like(PART_SIZE, seed=2)
    file_id = node.new_file()
    assert node.put(file_id, 0, data, zstd=True).status_code == 200
    saved = FileSaved.model_validate(node.commit(file_id, data).json())
    assert browser_get(hub_server, saved.url).content == data


def test_bad_parts_are_refused(hub_server: HubServer, node: FileNode) -> None:
    data = zip_like(2 * PART_SIZE + 10, seed=3)
    parts = cut(data)
    file_id = node.new_file()
    wrong = assert_problem(node.put(file_id, 0, parts[0], sha256="0" * 64), 422)
    assert "hashes to" in wrong["detail"]
    corrupted = bytearray(parts[0])
    corrupted[100] ^= 1
    claimed = hashlib.sha256(parts[0]).hexdigest()
    assert_problem(node.put(file_id, 0, bytes(corrupted), sha256=claimed), 422)
    oversize = data[: PART_SIZE + 1]
    assert_problem(node.put(file_id, 0, oversize), 422)
    assert_problem(node.put(file_id, 0, b"\0" * (PART_SIZE + 1000), zstd=True), 422)
    no_hash = node.request(
        "PUT", f"/files/{file_id}/parts/0", data=parts[0], headers={"Content-Encoding": "identity"}
    )
    assert_problem(no_hash, 400)
    brotli = node.request(
        "PUT",
        f"/files/{file_id}/parts/0",
        data=parts[0],
        headers={"Content-Encoding": "br", "X-Medix-Part-SHA256": claimed},
    )
    assert_problem(brotli, 415)
    assert_problem(node.put(file_id, 0, b""), 422)
    # None of that left a part behind.
    assert node.state(file_id).received_parts == ()
    node.put_all(file_id, data)
    assert node.commit(file_id, data).status_code == 200
    assert_problem(node.put(file_id, 0, parts[0]), 409)


def test_commit_checks_sizes_and_the_whole_file_hash(hub_server: HubServer, node: FileNode) -> None:
    data = zip_like(2 * PART_SIZE + 500, seed=4)
    file_id = node.new_file()
    node.put_all(file_id, data)
    # The commit's size does not match what the parts hold.
    assert (
        "add up to" in assert_problem(node.commit(file_id, data, size=len(data) - 1), 422)["detail"]
    )
    # A part count that does not fit the size.
    assert_problem(node.commit(file_id, data, parts=4), 422)
    # The whole file hashes differently from what the node says it sent.
    hash_mismatch = assert_problem(node.commit(file_id, data, sha256="ab" * 32), 422)
    assert "SHA-256" in hash_mismatch["detail"]
    assert hub_server.files() == []
    # The parts stayed: the right commit now succeeds.
    saved = FileSaved.model_validate(node.commit(file_id, data).json())
    assert browser_get(hub_server, saved.url).content == data
    # A different commit of the saved file is a conflict, not a second file.
    assert_problem(node.commit(file_id, data, sha256="cd" * 32), 409)


def test_a_short_part_before_the_last_is_refused_at_commit(
    hub_server: HubServer, node: FileNode
) -> None:
    data = zip_like(2 * PART_SIZE + 500, seed=5)
    parts = cut(data)
    file_id = node.new_file()
    short = parts[0][:-500]
    for n, part in enumerate((short, parts[1], parts[2] + data[-500:])):
        assert node.put(file_id, n, part).status_code == 200
    body = assert_problem(node.commit(file_id, data), 422)
    assert "part 0" in body["detail"]
    # Replacing the short part mends it.
    assert node.put(file_id, 0, parts[0]).status_code == 200
    assert node.put(file_id, 2, parts[2]).status_code == 200
    assert node.commit(file_id, data).status_code == 200


def test_parts_past_the_last_are_dropped_at_commit(hub_server: HubServer, node: FileNode) -> None:
    # A node that rebuilt a zip shorter than its first attempt leaves a stale part behind.
    longer = zip_like(3 * PART_SIZE + 1, seed=6)
    data = zip_like(2 * PART_SIZE + 7, seed=7)
    file_id = node.new_file()
    node.put_all(file_id, longer)
    node.put_all(file_id, data)
    assert node.state(file_id).received_parts == (0, 1, 2, 3)
    saved = FileSaved.model_validate(node.commit(file_id, data).json())
    assert browser_get(hub_server, saved.url).content == data
    assert node.state(file_id).received_parts == (0, 1, 2)


def test_files_of_other_nodes_are_invisible(
    hub_server: HubServer, make_node: Callable[[str], FileNode]
) -> None:
    owner, other = make_node("Owner"), make_node("Other")
    data = zip_like(PART_SIZE + 3, seed=8)
    file_id = owner.new_file()
    assert owner.put(file_id, 0, cut(data)[0]).status_code == 200
    assert_problem(other.request("GET", f"/files/{file_id}"), 404)
    assert_problem(other.put(file_id, 1, cut(data)[1]), 404)
    assert_problem(other.commit(file_id, data), 404)
    # The same job id at another node is another file.
    assert other.new_file("job-1") != file_id
    assert owner.state(file_id).received_parts == (0,)
    # Without a client certificate there is no node at all.
    anonymous = requests.get(
        hub_server.url + API + f"/files/{file_id}",
        verify=str(hub_server.ca_pem_path),
        timeout=TIMEOUT,
    )
    assert_problem(anonymous, 401)


def test_same_job_with_another_name_or_part_size_conflicts(node: FileNode) -> None:
    file_id = node.new_file("job-9", "a.zip")
    assert_problem(node.register("job-9", "b.zip"), 409)
    assert_problem(node.register("job-9", "a.zip", part_size=2 * PART_SIZE), 409)
    same = node.register("job-9", "a.zip")
    assert same.status_code == 200 and same.json()["file_id"] == file_id
    assert_problem(node.register("job 9", "a.zip"), 422)
    assert_problem(node.register("job-10", "../etc/passwd"), 422)
    assert_problem(node.register("job-10", "a.zip", part_size=1024), 422)


def test_download_links_need_the_exact_id_and_name(hub_server: HubServer, node: FileNode) -> None:
    data = zip_like(1000, seed=9)
    open_id = node.new_file("job-open", "open.zip")
    node.put(open_id, 0, data)
    assert browser_get(hub_server, f"{hub_server.url}/files/{open_id}/open.zip").status_code == 404
    file_id = node.new_file("job-saved", "saved.zip")
    node.put(file_id, 0, data)
    saved = FileSaved.model_validate(node.commit(file_id, data).json())
    assert browser_get(hub_server, saved.url).status_code == 200
    assert browser_get(hub_server, f"{hub_server.url}/files/{file_id}/other.zip").status_code == 404
    last = "B" if file_id.endswith("A") else "A"
    forged = f"{hub_server.url}/files/{file_id[:-1]}{last}/saved.zip"
    assert browser_get(hub_server, forged).status_code == 404


# -- webhook signature -----------------------------------------------------------------------


def progress_body(status: str = "1", file: str = "") -> bytes:
    body = {"Status": status, "headers": {"authorization": "t", "userid": "u", "kcode": "k"}}
    if file:
        body["File"] = file
    return json.dumps(body).encode()


def post_webhook(
    server: HubServer, body: bytes, headers: dict[str, str] | None = None, vendor: str = "afra"
) -> requests.Response:
    return requests.post(
        server.webhook_url(vendor),
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        verify=str(server.ca_pem_path),
        timeout=TIMEOUT,
        allow_redirects=False,
    )


def signed(enrolment: EnrolResponse, body: bytes, at: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if at is None else at)
    return {
        NODE_HEADER: enrolment.node_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(enrolment.webhook_key, timestamp, body),
    }


def test_signed_progress_is_verified_and_unsigned_is_recorded_unverified(
    hub_server: HubServer,
) -> None:
    enrolment = enrol(hub_server)
    assert hub_server.webhook_url() == f"{hub_server.url}/webhook/v1/pacs/afra"
    body = progress_body("7", "https://hub.example/files/x/study.zip")
    assert post_webhook(hub_server, body, signed(enrolment, body)).status_code == 204
    unsigned = progress_body("6")
    assert post_webhook(hub_server, unsigned).status_code == 204
    verified, plain = hub_server.webhooks()
    assert verified["verified"] is True and verified["node_id"] == enrolment.node_id
    assert verified["body"]["Status"] == "7" and verified["outcome"] == "recorded"
    assert plain["verified"] is False and plain["node_id"] == ""
    assert plain["body"]["Status"] == "6" and plain["answered"] == 204
    over_admin = admin(hub_server, "GET", "/webhooks").json()["webhooks"]
    assert [(e["verified"], e["node_id"]) for e in over_admin] == [
        (True, enrolment.node_id),
        (False, ""),
    ]


def test_bad_signatures_are_refused_and_not_recorded(hub_server: HubServer) -> None:
    enrolment = enrol(hub_server)
    other = enrol(hub_server, "Other")
    body = progress_body("2")
    now = int(time.time())
    cases = {
        "tampered body": (progress_body("5"), signed(enrolment, body)),
        "other node's key": (body, {**signed(other, body), NODE_HEADER: enrolment.node_id}),
        "stale": (body, signed(enrolment, body, at=now - 400)),
        "from the future": (body, signed(enrolment, body, at=now + 400)),
        "unknown node": (body, {**signed(enrolment, body), NODE_HEADER: "node-nobody"}),
        "no timestamp": (
            body,
            {k: v for k, v in signed(enrolment, body).items() if k != TIMESTAMP_HEADER},
        ),
        "garbage": (body, {**signed(enrolment, body), SIGNATURE_HEADER: "sha256=nope"}),
    }
    for case, (sent, headers) in cases.items():
        response = post_webhook(hub_server, sent, headers)
        assert response.status_code == 401, case
        assert response.headers["Content-Type"] == "application/problem+json", case
    assert hub_server.webhooks() == []
    # A revoked node's signature no longer counts.
    assert admin(hub_server, "POST", f"/nodes/{enrolment.node_id}/revoke").status_code == 204
    assert post_webhook(hub_server, body, signed(enrolment, body)).status_code == 401
    assert post_webhook(hub_server, body, signed(other, body)).status_code == 204


# -- fault injection and the redirect trap ---------------------------------------------------


def test_fail_next_fails_that_many_posts_and_logs_them(hub_server: HubServer) -> None:
    enrolment = enrol(hub_server)
    unauthorised = requests.post(
        hub_server.url + "/admin/webhooks/fail-next",
        json={"count": 2},
        verify=str(hub_server.ca_pem_path),
        timeout=TIMEOUT,
    )
    assert_problem(unauthorised, 401)
    armed = admin(hub_server, "POST", "/webhooks/fail-next", json={"count": 2, "status": 503})
    assert armed.status_code == 200 and armed.json() == {"count": 2, "status": 503}
    body = progress_body("0")
    answers = [post_webhook(hub_server, body, signed(enrolment, body)) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 204]
    assert_problem(answers[0], 503)
    log = hub_server.webhooks()
    assert [(e["outcome"], e["answered"]) for e in log] == [
        ("failed", 503),
        ("failed", 503),
        ("recorded", 204),
    ]
    assert all(e["verified"] for e in log)
    hub_server.fail_webhooks(1, 500)
    assert post_webhook(hub_server, progress_body("1")).status_code == 500
    assert post_webhook(hub_server, progress_body("1")).status_code == 204
    # Disarming, and what the admin may not ask for.
    hub_server.fail_webhooks(5)
    assert admin(hub_server, "POST", "/webhooks/fail-next", json={"count": 0}).status_code == 200
    assert post_webhook(hub_server, progress_body("2")).status_code == 204
    bad = admin(hub_server, "POST", "/webhooks/fail-next", json={"count": 1, "status": 200})
    assert_problem(bad, 422)
    # A refused post (bad signature, invalid body) does not use up an injected failure.
    hub_server.fail_webhooks(1)
    wrong = {**signed(enrolment, body), SIGNATURE_HEADER: "sha256=" + "0" * 64}
    assert post_webhook(hub_server, body, wrong).status_code == 401
    assert post_webhook(hub_server, progress_body("9")).status_code == 422
    assert post_webhook(hub_server, body).status_code == 503


def test_redirect_route_points_at_the_metadata_address(hub_server: HubServer) -> None:
    url = hub_server.webhook_redirect_url()
    assert url == f"{hub_server.url}/webhook/v1/redirect"
    for method in ("POST", "GET"):
        response = requests.request(
            method,
            url,
            data=progress_body(),
            verify=str(hub_server.ca_pem_path),
            timeout=TIMEOUT,
            allow_redirects=False,
        )
        assert response.status_code == 302
        assert response.headers["Location"] == METADATA_URL
    assert hub_server.webhooks() == []


# -- download command args -------------------------------------------------------------------


def test_download_commands_take_one_uid_a_list_or_a_patient(
    hub_server: HubServer, node: FileNode
) -> None:
    hook = {
        "WebhookUri": hub_server.webhook_url(),
        "WebhookHeaders": {"authorization": "t", "userid": "u", "kcode": "k"},
    }
    url = f"/nodes/{node.node_id}/commands"
    good = (
        {"StudyInstanceUID": "1.2.3"},
        {"StudyInstanceUID": ["1.2.3", "1.2.4"]},
        {"PatientID": "P-1"},
    )
    for subject in good:
        response = admin(hub_server, "POST", url, json={"type": "download", "args": subject | hook})
        assert response.status_code == 201, (subject, response.text)
    bad = (
        {},
        {"StudyInstanceUID": "1.2.3", "PatientID": "P-1"},
        {"StudyInstanceUID": []},
        {"StudyInstanceUID": [f"1.2.{n}" for n in range(51)]},
        {"StudyInstanceUID": ["1.2.3", "not a uid"]},
        {"PatientID": ""},
    )
    for subject in bad:
        response = admin(hub_server, "POST", url, json={"type": "download", "args": subject | hook})
        assert_problem(response, 422)
    batch = node.request("GET", "/commands").json()["commands"]
    assert [c["args"].get("StudyInstanceUID", c["args"].get("PatientID")) for c in batch] == [
        "1.2.3",
        ["1.2.3", "1.2.4"],
        "P-1",
    ]


# -- an older hub's data ---------------------------------------------------------------------

# The nodes and webhooks tables as the first hub release made them.
V1_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE,
    certificate_pem TEXT NOT NULL, software_version TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '', enrolled_at REAL NOT NULL, last_heartbeat REAL,
    health TEXT NOT NULL DEFAULT '', queue_json TEXT NOT NULL DEFAULT '{}',
    policy_version INTEGER, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY, vendor TEXT NOT NULL, received_at REAL NOT NULL,
    address TEXT NOT NULL, headers_json TEXT NOT NULL, body_json TEXT NOT NULL
);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO nodes (id, name, fingerprint, certificate_pem, enrolled_at)
    VALUES ('node-old', 'Old node', 'ab', 'PEM', 1700000000);
INSERT INTO webhooks (vendor, received_at, address, headers_json, body_json)
    VALUES ('acme', 1700000001, '10.0.0.1', '{}', '{"Status": "7", "headers": {}, "File": ""}');
"""


def test_a_database_from_the_first_release_keeps_working(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "hub.sqlite3")
    db.executescript(V1_TABLES)
    db.close()
    with HubServer(data_dir, admin_token=ADMIN_TOKEN) as server:
        [old] = server.nodes()
        assert old["id"] == "node-old"
        assert old["has_webhook_key"] is False and old["has_api_token"] is False
        with pytest.raises(HubError) as no_token:
            server.node_api_token("node-old")
        assert no_token.value.status == 404
        [entry] = server.webhooks()
        assert entry["vendor"] == "acme" and entry["verified"] is False
        assert entry["outcome"] == "recorded"
        # New nodes enrol with secrets beside the old one.
        enrolment = enrol(server)
        assert server.node_api_token(enrolment.node_id) == enrolment.node_api_token
        body = progress_body("3")
        assert post_webhook(server, body, signed(enrolment, body)).status_code == 204
        # The old node has no key: a signature claiming to be from it cannot verify.
        forged = {**signed(enrolment, body), NODE_HEADER: "node-old"}
        assert post_webhook(server, body, forged).status_code == 401
