"""End to end on loopback: storescu -> the box -> Medis code -> the reference hub, over TLS.

The hub is the real reference hub (cheroot, mutual TLS); the box is built in-process with a
fake clock, so the stable age and retry waits pass when the test says so, not by sleeping.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import flask
import pytest
from pydicom import dcmread

from afra.app import build_appliance
from afra.medis.codes import is_valid
from afra.uplink.client import HubRefused, enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer
from medix.models import API_PREFIX, Policy
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.netproxy import Proxy
from tests.peers import storescu
from tests.uplink.conftest import (
    LOOPBACK,
    BoxFactory,
    assert_hub_holds,
    complete_and_deliver,
    send_study,
    the_study,
    wait_for,
)


def test_study_reaches_the_hub_under_its_code(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "E2E")
    study = complete_and_deliver(box, clock, files)
    assert is_valid(study.medis_code)  # type: ignore[attr-defined]
    assert_hub_holds(hub, box, study, files)
    assert box.index.upload_study(study.id).state == "delivered"  # type: ignore[attr-defined,union-attr]


def test_hub_down_for_a_while_then_back(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    hub.stop()
    files = send_study(box, tmp_path, "DOWN")
    clock.advance(10)
    wait_for(lambda: the_study(box, files).attempts >= 1, what="a failed attempt")  # type: ignore[attr-defined]
    study = the_study(box, files)
    # Queued still: a study becomes "uploading" only once the hub has registered it.
    assert study.state == "queued" and "unreachable" in study.last_error  # type: ignore[attr-defined]
    hub.start()  # same data, same port, same CA
    clock.advance(5)  # past the backoff
    wait_for(lambda: the_study(box, files).state == "delivered", what="delivery")  # type: ignore[attr-defined]
    assert_hub_holds(hub, box, the_study(box, files), files)


def test_connection_cut_mid_upload(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    host, port = hub.url.removeprefix("https://").split(":")
    with Proxy((host, int(port))) as proxy:
        box = enrolled_box(hub, via=f"https://127.0.0.1:{proxy.port}", hub={"part_size_kb": 64})
        files = send_study(box, tmp_path, "CUT", n=8, size=256)  # ~0.4 MB on the wire
        proxy.cut_after(120_000)
        clock.advance(10)
        wait_for(lambda: the_study(box, files).attempts >= 1, what="the cut to fail an attempt")  # type: ignore[attr-defined]
        clock.advance(5)
        wait_for(lambda: the_study(box, files).state == "delivered", what="delivery")  # type: ignore[attr-defined]
        box.stop()  # before the proxy goes: no poll through a dead link
    study = the_study(box, files)
    assert_hub_holds(hub, box, study, files)
    assert len([s for s in hub.studies() if s["medis_code"] == study.medis_code]) == 1  # type: ignore[attr-defined]


def test_wrong_pairing_code_is_refused(hub: HubServer, tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path / "identity")
    with pytest.raises(HubRefused) as err:
        enrol(
            identity,
            hub_url=hub.url,
            pairing_code="WRONG-CODE-123",
            ca_file=Path(hub.ca_pem_path),
            node_name="afra-test",
        )
    assert err.value.status == 403
    assert not identity.enrolled and identity.key_path.exists()
    assert (identity.key_path.stat().st_mode & 0o777) == 0o600


def test_hub_with_another_certificate_is_not_trusted(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    port = hub.url.rsplit(":", 1)[1]
    hub.stop()
    impostor = HubServer(tmp_path / "impostor", port=int(port))  # its own CA
    impostor.start()
    try:
        files = send_study(box, tmp_path, "MITM")
        clock.advance(10)
        wait_for(lambda: the_study(box, files).attempts >= 1, what="a refused attempt")  # type: ignore[attr-defined]
        study = the_study(box, files)
        assert study.state != "delivered"  # type: ignore[attr-defined]
        assert "certificate" in study.last_error  # type: ignore[attr-defined]
        assert impostor.studies() == []
    finally:
        impostor.stop()


def test_policy_from_heartbeat_is_kept(
    hub: HubServer, enrolled_box: BoxFactory, tmp_path: Path
) -> None:
    hub.publish_policy(Policy(version=3, retention_days=2, bandwidth_cap_kbps=4000))
    box = enrolled_box(hub)
    box.uplink.heartbeat()
    assert box.policy.current.version == 3
    again = build_appliance(box.config, clock=FakeClock())
    try:
        assert again.policy.current.bandwidth_cap_kbps == 4000
    finally:
        again.close()


def test_box_killed_mid_upload_resumes_after_restart(hub: HubServer, tmp_path: Path) -> None:
    """A real `afra run` process, killed with SIGKILL while parts are going up."""
    import signal
    import subprocess
    import sys

    from afra.dicom.spool import Spool
    from afra.store.index import Index
    from tests.peers import free_port

    hub.publish_policy(Policy(version=1, bandwidth_cap_kbps=2000))  # slow enough to kill
    data = tmp_path / "box"
    enrol(
        NodeIdentity(data / "identity"),
        hub_url=hub.url,
        pairing_code=hub.new_pairing_code(),
        ca_file=Path(hub.ca_pem_path),
        node_name="afra-kill",
    )
    port = free_port()
    config = tmp_path / "afra.toml"
    config.write_text(
        f'[box]\ndata_dir = "{data}"\n'
        f'[dicom]\nbind = "127.0.0.1"\nport = {port}\nallow_any_peer = true\n'
        "[storage]\nmin_free_mb = 0\n"
        "[study]\nstable_age = 1\nscan_interval = 0.2\n"
        "[hub]\npart_size_kb = 128\nretry_base = 0.5\nretry_cap = 1\n"
    )

    logs: list[Path] = []

    def start_box() -> subprocess.Popen[bytes]:
        log = tmp_path / f"box-{len(logs)}.log"
        logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "afra.cli", "--config", str(config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: b"listening" in log.read_bytes(), what="the box to start")
        return proc

    def upload() -> dict[str, object] | None:
        return next(iter(hub.studies()), None)

    box = start_box()
    try:
        files = make_ct_series(tmp_path / "KILL", n=12, rows=256, cols=256, patient_id="KILL")
        storescu(LOOPBACK, port, files)
        wait_for(lambda: (upload() or {}).get("received_parts", 0) >= 2, what="parts to arrive")
        box.send_signal(signal.SIGKILL)
        box.wait(timeout=10)
        held = upload()
        assert held is not None and held["state"] == "open"
        assert held["received_parts"] < held["parts"]  # type: ignore[operator]
        box = start_box()
        wait_for(lambda: (upload() or {}).get("state") == "committed", 60, "the commit")
    finally:
        box.send_signal(signal.SIGTERM)
        box.wait(timeout=30)
    index = Index(data / "index.sqlite")
    try:
        [study] = index.studies()
        assert study.state == "delivered"
        [entry] = hub.studies()
        spool = Spool(data)
        for sent in files:
            ds = dcmread(sent, stop_before_pixels=True)
            kept = spool.absolute(spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
            assert hub.instance_bytes(entry["upload_id"], ds.SOPInstanceUID) == kept.read_bytes()
    finally:
        index.close()


def test_hub_commands_travel_over_the_nodes_long_poll(
    hub: HubServer, enrolled_box: BoxFactory
) -> None:
    box = enrolled_box(hub)
    assert box.commands is not None
    node = hub.nodes()[0]["id"]
    hub.queue_command(node, "apply_policy", {"version": 5, "retention_days": 1})
    hub.queue_command(node, "locate", {"seconds": 60})
    wait_for(lambda: box.policy.current.version == 5, what="the policy command")
    results = {}

    def answered() -> bool:
        import requests

        with requests.Session() as session:
            session.trust_env = False
            listed = session.get(
                f"{hub.url}/admin/nodes/{node}/commands",
                headers={"Authorization": f"Bearer {hub.admin_token}"},
                verify=str(hub.ca_pem_path),
                timeout=10,
            ).json()
        for entry in listed["commands"]:
            results[entry["type"]] = entry
        return len(results) == 2 and all(r["state"] in ("done", "failed") for r in results.values())

    wait_for(answered, what="both results")
    assert results["apply_policy"]["ok"] is True
    assert results["apply_policy"]["result"] == {"version": 5}
    assert results["locate"]["ok"] is True  # the front panel shows the locate pattern
    assert box.health.state == "locating"


def test_a_box_stops_without_waiting_out_its_long_poll(
    hub: HubServer, enrolled_box: BoxFactory
) -> None:
    # The hub's view of the poll: Flask signals each request it starts handling.
    polling = threading.Event()

    def request_started(_app: object, **_extra: object) -> None:
        if flask.request.method == "GET" and flask.request.path == f"{API_PREFIX}/commands":
            polling.set()

    with flask.request_started.connected_to(request_started, hub.app):
        box = enrolled_box(hub, hub={"command_poll_s": 60})
        wait_for(polling.is_set, timeout=30, what="the box's long poll open at the hub")
    started = time.monotonic()
    box.stop()
    # systemd allows 30 s (TimeoutStopSec); the poll alone would hold the box for 60.
    assert time.monotonic() - started < 20
    hub.stop()  # the hub restarting ends the old poll (it handles nothing after the stop)
    hub.start()
    box.start()
    hub.queue_command(hub.nodes()[0]["id"], "apply_policy", {"version": 7})
    wait_for(lambda: box.policy.current.version == 7, timeout=60, what="the next command")


def test_odd_dates_do_not_block_the_queue(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    from tests.dicomgen import make_instance

    box = enrolled_box(hub)
    odd = make_instance(
        tmp_path / "odd.dcm", extra={"StudyDate": "01/02/80", "PatientBirthDate": "1980-1-2"}
    )
    storescu(LOOPBACK, box.dicom.port, [odd])
    files = send_study(box, tmp_path, "NEXT", n=2)
    clock.advance(10)
    wait_for(lambda: the_study(box, files).state == "delivered", what="the study behind it")  # type: ignore[attr-defined]
    wait_for(lambda: the_study(box, [odd]).state == "delivered", what="the odd one")  # type: ignore[attr-defined]
