"""Every action the suite performs on a box leaves its audit record: audit_missing counts those
that do not. One box enrolled with a real reference hub, its web app, a modality (storescu)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from afra.app import Appliance
from afra.system.provision import new_setup_code
from afra_web import create_app
from medix.hub.server import HubServer
from medix.models import AuditEvent, DownloadRequest, Policy
from tests.conftest import BoxFactory, wait_for
from tests.fakes import FakeClock
from tests.figures import FIGURES
from tests.peers import free_port
from tests.uplink.conftest import complete_and_deliver, send_study
from tests.web.conftest import PASSWORD, FakeNetwork, finish_setup, post

Check = Callable[[AuditEvent], bool]


def about(study_uid: str) -> Callable[[AuditEvent], bool]:
    return lambda e: any(o.id == study_uid for o in e.objects)


def what(text: str) -> Callable[[AuditEvent], bool]:
    return lambda e: any(text in o.details.get("what", "") for o in e.objects)


def test_every_action_leaves_an_audit_record(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box: Appliance = enrolled_box(
        hub, web={"port": 0}, downloads={"allow_addresses": ["127.0.0.1/32"]}
    )
    performed: dict[str, Check] = {}

    def expect(action: str, code: str, *more: Check, outcome: int = 0, types: str = "") -> None:
        checks = [lambda e: e.event.code == code and e.outcome == outcome, *more]
        if types:
            checks.append(lambda e: any(t.code == types for t in e.types))
        performed[action] = lambda e: all(c(e) for c in checks)

    # Patient data: a study in, its code, its upload.
    files = send_study(box, tmp_path, "P-AUDITED", n=2)
    study = complete_and_deliver(box, clock, files)
    uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    expect("receive", "110104", about(uid))
    expect("code issued", "110110", about(uid), lambda e: e.action == "C")
    expect("upload", "110106", about(uid), what("upload to the hub"))

    # A download the hub asks for.
    assert box.downloads is not None
    request = {
        "StudyInstanceUID": uid,
        "WebhookUri": hub.webhook_url(),
        "WebhookHeaders": {"authorization": "PACS-TOKEN", "userid": "u-audit", "kcode": "K1"},
    }
    job = box.downloads.submit(DownloadRequest.model_validate(request))
    wait_for(lambda: box.downloads.job(job.job_id).state == "saved", what="the download saved")  # type: ignore[union-attr]
    expect("download", "110106", about(uid), what("download job"))

    # A policy from the hub.
    hub.publish_policy(Policy(version=7))
    box.uplink.heartbeat()
    expect(
        "policy change",
        "110113",
        lambda e: "policy version 7" in e.outcome_text,
        types="110131",
    )

    # And one sent as a command.
    node = box.identity.node_id
    hub.queue_command(node, "apply_policy", Policy(version=8).model_dump(mode="json"))
    wait_for(lambda: box.policy.current.version == 8, what="the policy command applied")
    expect("policy command", "110113", lambda e: "policy version 8" in e.outcome_text)

    # People on the web app: claim, password, settings, a wrong password, sign-out, codes.
    app = create_app(box, network=FakeNetwork(), clock=clock)
    app.testing = True
    web = app.test_client()
    finish_setup(web, new_setup_code(box.config.box.data_dir), port=str(free_port()))
    expect("sign-in", "110114", lambda e: e.participants[0].user_id == "Sara Technician")
    expect("password set", "110113", types="110129")
    expect("settings change", "110113", lambda e: "DICOM settings changed" in e.outcome_text)
    [row] = [s for s in box.index.studies() if s.study_uid == uid]
    assert post(web, f"/studies/{row.id}/reveal").status_code == 200
    expect("code reveal", "110110", about(uid), lambda e: e.action == "R")
    assert post(web, f"/studies/{row.id}/slip").status_code == 200
    expect("slip print", "110106", about(uid), what("patient slip"))
    assert web.get("/audit.csv").status_code == 200
    expect("audit log used", "110101")
    assert post(web, "/logout").status_code in (302, 303)
    expect("sign-out", "110114", types="110123")
    wrong = post(web, "/login", {"name": "Mallory", "password": PASSWORD + "x"})
    assert wrong.status_code == 400
    expect("failed sign-in", "110114", lambda e: e.participants[0].user_id == "Mallory", outcome=4)

    # (System updates: tests/update/test_manager.py checks the refused bundle's record; a
    # development box installs none.)
    assert study is not None
    assert box.audit is not None
    records = box.audit.trail.after(0, limit=100_000)
    missing = [action for action, check in performed.items() if not any(map(check, records))]
    FIGURES["audit"] = [f"audit_missing={len(missing)}"]
    assert missing == [], f"no audit record for: {missing}"
    assert len(performed) == 14
