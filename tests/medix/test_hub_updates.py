"""The reference hub's system updates: the administrator stores a bundle and offers it in a
policy; nodes fetch it (mutual TLS, byte ranges) and report how it went."""

from __future__ import annotations

import hashlib
import os

from medix.models import Heartbeat, QueueStats, UpdateReport
from tests.medix.conftest import HubClient

BUNDLE = os.urandom(300_000)
SHA = hashlib.sha256(BUNDLE).hexdigest()
QUERY = "?version=1.1.0&compatible=afra-rpi4-arm64"


def test_an_uploaded_bundle_is_named_by_its_hash_and_offered_in_a_new_policy(
    hc: HubClient,
) -> None:
    before = hc.hub.policy().version
    answer = hc.client.put(
        "/admin/updates" + QUERY + "&publish=1", data=BUNDLE, headers=hc.admin_headers()
    )
    assert answer.status_code == 201, answer.get_json()
    offer = answer.get_json()
    assert offer == {
        "version": "1.1.0",
        "compatible": "afra-rpi4-arm64",
        "sha256": SHA,
        "size": len(BUNDLE),
    }
    policy = hc.hub.policy()
    assert policy.version == before + 1 and policy.update is not None
    assert policy.update.sha256 == SHA


def test_a_node_fetches_the_bundle_whole_or_from_where_it_stopped(hc: HubClient) -> None:
    hc.client.put("/admin/updates" + QUERY, data=BUNDLE, headers=hc.admin_headers())
    with hc.node_get(f"/updates/{SHA}") as whole:
        assert whole.status_code == 200 and whole.data == BUNDLE
    with hc.node_get(f"/updates/{SHA}", headers={"Range": "bytes=100000-"}) as rest:
        assert rest.status_code == 206 and rest.data == BUNDLE[100000:]


def test_only_enrolled_nodes_fetch_and_only_the_admin_stores(hc: HubClient) -> None:
    hc.client.put("/admin/updates" + QUERY, data=BUNDLE, headers=hc.admin_headers())
    assert hc.client.get(f"/medix/v1/updates/{SHA}").status_code == 401
    assert hc.client.put("/admin/updates" + QUERY, data=b"x").status_code == 401
    assert hc.node_get(f"/updates/{'0' * 64}").status_code == 404
    assert hc.node_get("/updates/..%2Fhub.sqlite").status_code == 404


def test_a_malformed_upload_is_refused_with_the_reason(hc: HubClient) -> None:
    empty = hc.client.put("/admin/updates" + QUERY, data=b"", headers=hc.admin_headers())
    assert empty.status_code == 400 and "empty" in empty.get_json()["detail"]
    bad = hc.client.put(
        "/admin/updates?version=not a version&compatible=x", data=b"x", headers=hc.admin_headers()
    )
    assert bad.status_code == 400 and "version" in bad.get_json()["detail"]
    assert list((hc.hub.updates.directory).iterdir()) == []  # nothing half-stored


def test_the_nodes_report_of_its_update_is_shown_to_the_admin(hc: HubClient) -> None:
    beat = Heartbeat(
        software_version="1.1.0",
        policy_version=0,
        health="healthy",
        queue=QueueStats(studies_waiting=0, oldest_waiting_s=0, bytes_waiting=0),
        update=UpdateReport(state="kept", version="1.1.0", message="passed its self-test"),
    )
    assert hc.node_post("/heartbeat", json=beat.model_dump(mode="json")).status_code == 200
    node = next(n for n in hc.admin_get("/nodes").get_json()["nodes"] if n["id"] == hc.node_id)
    assert node["software_version"] == "1.1.0"
    assert node["update"]["state"] == "kept"
