"""A real box leaves a record for each touch of patient data, and the hub gets them."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from afra.app import Appliance
from medix.hub.server import HubServer
from medix.models import AuditEvent
from tests.conftest import BoxFactory, wait_for
from tests.fakes import FakeClock
from tests.uplink.conftest import complete_and_deliver, send_study


def records(box: Appliance) -> list[AuditEvent]:
    assert box.audit is not None
    return box.audit.trail.after(0, limit=10_000)


def about(events: list[AuditEvent], study_uid: str, code: str) -> list[AuditEvent]:
    return [e for e in events if e.event.code == code and any(o.id == study_uid for o in e.objects)]


def test_receive_code_and_upload_each_leave_a_record(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "P-AUDIT", n=3)
    study = complete_and_deliver(box, clock, files)
    uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    events = records(box)
    assert events[0].event.code == "110100" and events[0].types[0].code == "110120"  # start

    [received] = about(events, uid, "110104")
    sender = received.participants[0]
    assert sender.user_id == "STORESCU" and sender.requestor
    assert received.objects[0].details["instances"] == "3"
    assert received.objects[1].id == "P-AUDIT"  # the patient, by ID

    [issued] = about(events, uid, "110110")
    assert issued.action == "C"
    assert issued.objects[0].details["code"] == "…" + study.medis_code[-4:]  # type: ignore[attr-defined]
    assert study.medis_code not in issued.model_dump_json()  # type: ignore[attr-defined]

    [uploaded] = about(events, uid, "110106")
    assert uploaded.outcome == 0 and uploaded.participants[1].user_id == hub.url
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_the_hub_gets_every_record_once_in_order(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    files = send_study(box, tmp_path, "P-HUB", n=2)
    complete_and_deliver(box, clock, files)
    assert box.audit is not None
    held = box.audit.trail.after(0, limit=10_000)
    node_id = box.identity.node_id
    wait_for(
        lambda: len(hub.audit(node_id)) >= len(held), timeout=30, what="the records at the hub"
    )
    at_hub = hub.audit(node_id)
    assert [r["seq"] for r in at_hub][: len(held)] == [e.seq for e in held]
    assert at_hub[0]["source"] == held[0].source and held[0].source.startswith("afra-")

    # A batch sent again (a cursor lost in a crash) is kept once.
    assert box.hub is not None
    assert box.hub.post_audit(held) >= held[-1].seq
    assert [r["seq"] for r in hub.audit(node_id)] == sorted({r["seq"] for r in hub.audit(node_id)})
