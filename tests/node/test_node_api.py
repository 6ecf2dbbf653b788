"""The node-side HTTP API (token, TLS), report status, diagnostics and restart behaviour."""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from pydicom import dcmread

from afra import cli
from afra.app import Appliance, build_appliance
from afra.node.jobstore import JobStore
from medix.hub.server import HubServer
from medix.models import DownloadStatus
from tests.conftest import wait_for
from tests.dicomgen import make_ct_series, make_report
from tests.fakes import FakeClock
from tests.node.conftest import BoxFactory, statuses
from tests.node.test_downloads import node_id, pacs_box, request, send_and_complete
from tests.peers import Orthanc, free_port


def api_box(node_box: BoxFactory, hub: HubServer) -> tuple[Appliance, str]:
    box = node_box(hub, node_api={"enabled": True, "bind": "127.0.0.1", "port": free_port()})
    assert box.node_api is not None
    return box, f"https://127.0.0.1:{box.node_api.port}"


class Answer:
    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status_code = response.status
        self.body = response.data

    def json(self) -> Any:
        return json.loads(self.body)


def call(hub: HubServer, url: str, token: str | None, body: Any, method: str = "POST") -> Answer:
    """As the hub calls a node: TLS verified against the hub's CA and the node's id (the
    node's enrolment certificate names it), whatever address the node has."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(hub.ca_pem_path))
    pool = urllib3.HTTPSConnectionPool(
        parts.hostname,
        parts.port,
        ssl_context=context,
        server_hostname=node_id(hub),
        assert_hostname=node_id(hub),
        retries=False,
    )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        return Answer(
            pool.urlopen(
                method, parts.path, body=None if method == "GET" else data, headers=headers
            )
        )
    finally:
        pool.close()


@pytest.mark.attack  # the node API without the token, with a wrong one, hostile bodies
def test_node_api_takes_the_hubs_token_only(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box, base = api_box(node_box, hub)
    token = hub.node_api_token(node_id(hub))
    study_uid = send_and_complete(
        box, clock, make_ct_series(tmp_path / "in", n=2, rows=64, cols=64)
    )
    body = request(hub, study_uid, "u-api")

    assert call(hub, f"{base}/api/study/download", None, body).status_code == 401
    assert call(hub, f"{base}/api/study/download", "not-the-token", body).status_code == 401
    bad = call(hub, f"{base}/api/study/download", token, {**body, "StudyInstanceUID": "../x"})
    assert bad.status_code == 422 and "StudyInstanceUID" in bad.json()["detail"]
    inward = call(
        hub, f"{base}/api/study/download", token, {**body, "WebhookUri": "https://10.0.0.1/x"}
    )
    assert inward.status_code == 422 and inward.json()["title"] == "Webhook refused"
    assert call(hub, f"{base}/api/study/download", token, b"nope").status_code == 400

    answer = call(hub, f"{base}/api/study/download", token, body)
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]
    wait_for(lambda: 7 in statuses(hub, "u-api"), what="DownloadSaved")
    timeline = call(hub, f"{base}/api/jobs/{job_id}", token, None, "GET").json()["timeline"]
    assert [e["name"] for e in timeline][-1] == "DownloadSaved"


def test_report_status_from_the_index_and_reports_travel_with_their_study(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box, base = api_box(node_box, hub)
    images = make_ct_series(tmp_path / "a", n=2, rows=64, cols=64, seed=61)
    study_uid = str(dcmread(images[0]).StudyInstanceUID)
    sr = make_report(tmp_path / "a" / "sr.dcm", study_uid=study_uid, kind="SR")
    pdf = make_report(
        tmp_path / "a" / "pdf.dcm", study_uid=study_uid, kind="PDF", content_date="20240118"
    )
    send_and_complete(box, clock, [*images, sr, pdf])
    plain = make_ct_series(tmp_path / "b", n=1, rows=64, cols=64, seed=62)
    storescu_uid = str(dcmread(plain[0]).StudyInstanceUID)
    from tests.peers import storescu

    storescu("127.0.0.1", box.dicom.port, plain)

    answer = call(
        hub,
        f"{base}/api/study/report-status",
        hub.node_api_token(node_id(hub)),
        {"StudyInstanceUIDs": [study_uid, storescu_uid, "1.2.3.404"]},
    ).json()["Studies"]

    assert answer[0] == {
        "StudyInstanceUID": study_uid,
        "HasReport": True,
        "Count": 2,
        "Kinds": ["PDF", "SR"],
        "LatestAt": "2024-01-18T09:30:00",
        "Source": "node",
    }
    assert answer[1]["HasReport"] is False and answer[1]["Source"] == "node"
    assert answer[2]["Source"] == "unknown" and answer[2]["HasReport"] is False
    # The reports reach the hub with their study.
    wait_for(
        lambda: (
            any(s["state"] == "delivered" or s.get("receipt") for s in hub.studies())
            or [
                s
                for s in box.index.studies()
                if s.study_uid == study_uid and s.state == "delivered"
            ]
        ),
        what="delivery",
        tick=lambda: clock.advance(1),
    )
    [study] = [s for s in hub.studies() if s["study_uid"] == study_uid]
    held = hub.instance_bytes(study["upload_id"], str(dcmread(sr).SOPInstanceUID))
    assert held[128:132] == b"DICM" and dcmread(sr).SOPInstanceUID.encode() in held


@pytest.mark.peers
def test_report_status_asks_the_pacs_for_studies_the_box_never_held(
    hub: HubServer, node_box: BoxFactory, orthanc: Orthanc, box_port: int, tmp_path: Path
) -> None:
    box = pacs_box(node_box, hub, orthanc, box_port)
    images = make_ct_series(tmp_path / "p", n=1, rows=64, cols=64, seed=71)
    study_uid = str(dcmread(images[0]).StudyInstanceUID)
    orthanc.upload_many(
        [*images, make_report(tmp_path / "p" / "sr.dcm", study_uid=study_uid, seed=71)]
    )
    bare = make_ct_series(tmp_path / "q", n=1, rows=64, cols=64, seed=72)
    orthanc.upload_many(bare)

    command = hub.queue_command(
        node_id(hub),
        "report_status",
        {"StudyInstanceUIDs": [study_uid, str(dcmread(bare[0]).StudyInstanceUID), "1.2.3.404"]},
    )
    done = wait_for(
        lambda: next(
            (c for c in hub.hub.node_commands(node_id(hub)).commands if c.id == command and c.ok),
            None,
        ),
        what="the report status",
    )
    got = done.result["Studies"]
    assert [(s["HasReport"], s["Source"], s["Kinds"]) for s in got] == [
        (True, "pacs", ["SR"]),
        (False, "pacs", []),
        (False, "unknown", []),
    ]
    assert box.index.holding(study_uid).revisions == 0  # asking moved nothing


def test_diagnostics_command_sends_the_bundle(
    hub: HubServer, node_box: BoxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="afra")  # as `afra run` sets box.log_level
    box = node_box(hub)
    command = hub.queue_command(node_id(hub), "diagnostics", {})
    done = wait_for(
        lambda: next(
            (c for c in hub.hub.node_commands(node_id(hub)).commands if c.id == command and c.ok),
            None,
        ),
        what="the bundle",
    )
    bundle = done.result
    assert bundle["hub_tls"]["ok"] and bundle["hub_dns"]["addresses"] == ["127.0.0.2"]
    assert bundle["certificate"]["days_left"] > 300
    assert bundle["clock"]["ok"] is False  # the box's clock is the test's fake one, years off
    assert bundle["pacs_echo"] == {
        "ok": False,
        "error": "no PACS configured",
        "ms": bundle["pacs_echo"]["ms"],
    }
    assert bundle["disk"]["free_mb"] > 0 and bundle["node_id"] == node_id(hub)
    assert any("hub command" in line for line in bundle["recent_log"])
    assert box.diagnostics()["queue"]["studies_waiting"] == 0


@pytest.mark.parametrize(
    ("subject", "reached", "ended"),
    [
        ("1.2.3.4", [0, 1], [-4]),
        ("1.2.3.4", [0, 1, 2, 3], [-3]),
        ("1.2.3.4", [0, 2, 3, 4, 5, 6], [-2]),
        ("studies:1.2.3.4,1.2.3.5", [0, 8, 1], [-4, -1]),
    ],
)
def test_a_restart_ends_a_cut_job_with_its_failure_status(
    hub: HubServer,
    node_box: BoxFactory,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    subject: str,
    reached: list[int],
    ended: list[int],
) -> None:
    box = node_box(hub)
    config = box.config
    box.close()
    store = JobStore(config.box.data_dir / "jobs.sqlite")  # as a power cut left it
    store.add_job("cut1", "k", subject, "u-cut", "command", clock.time())
    for status in reached:
        store.add_event("cut1", DownloadStatus(status), clock.time())
    store.add_subscriber(
        "cut1", hub.webhook_url(), {"authorization": "t", "userid": "u-cut", "kcode": "K"}
    )
    store.close()
    (config.box.data_dir / "jobs" / "cut1").mkdir(parents=True)
    (config.box.data_dir / "jobs" / "cut1" / "study.zip").write_bytes(b"half a zip")

    again = build_appliance(config, clock=clock)
    again.start()
    try:
        wait_for(lambda: statuses(hub, "u-cut") == reached + ended, what="the cut job's statuses")
        assert not (config.box.data_dir / "jobs" / "cut1").exists()  # no study left behind
        job = again.downloads.job("cut1")
        assert job.state == "failed" and "restarted" in job.error
    finally:
        again.close()
    # The technician's view of it: `afra jobs`.
    assert cli.main(["--set", f'box.data_dir="{config.box.data_dir}"', "jobs"]) == 0
    shown = capsys.readouterr().out
    assert "cut1  failed" in shown and "restarted" in shown
    assert f"{ended[0]:>3} {DownloadStatus(ended[0]).name}" in shown


def test_a_repeated_request_revives_a_webhook_that_was_given_up_on(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    headers = {"authorization": "t", "userid": "u", "kcode": "K"}
    store.add_job("j1", "k", "1.2.3", "u", "command", 0.0)
    first = store.add_subscriber("j1", "https://hub/x", headers)
    assert first is not None
    assert store.add_subscriber("j1", "https://hub/x", headers) is None  # active: joined as is
    store.end_subscriber(first, "abandoned", "hub down for an hour")

    assert store.add_subscriber("j1", "https://hub/x", headers) == first
    [sub] = store.subscribers("j1")
    assert sub.state == "active"
    store.close()
