"""The audit trail on the box: ordered, bounded, never silently dropped; sent on over TLS."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # our own messages, not untrusted input
from collections.abc import Iterator
from pathlib import Path

import pytest

from afra.audit import Actor, Events, Forwarder, StudyRef
from afra.audit.forward import BOM, DestinationStuck, SyslogTls, audit_message
from afra.audit.trail import AuditTrail
from afra.clock import SystemClock
from medix.hub.ca import HubCA
from tests.conftest import wait_for
from tests.fakes import FakeClock
from tests.peers import Rsyslog

EVENTS = Events("afra-3fa9c1")
TECH = Actor("Sara", address="192.168.1.20")
STUDY = StudyRef("1.2.826.0.1.3680043.8.498.1", "P-17", "Rahimi^Sara", 12)


def xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)  # noqa: S314 - the box's own messages


def login(clock: FakeClock | SystemClock, ok: bool = True) -> object:
    return EVENTS.authentication(clock.time(), TECH, login=True, outcome=0 if ok else 4)


def test_records_are_numbered_without_gaps_and_kept_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    trail = AuditTrail(tmp_path / "trail.sqlite", clock=clock, events=EVENTS)
    trail.record(login(clock))
    trail.record(EVENTS.received(clock.time(), Actor("CT1", "10.0.0.5"), STUDY))
    trail.close()
    again = AuditTrail(tmp_path / "trail.sqlite", clock=clock, events=EVENTS)
    again.record(login(clock, ok=False))
    records = again.after(0)
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.event.code for r in records] == ["110114", "110104", "110114"]
    received = records[1]
    assert (
        received.objects[0].id == STUDY.study_uid
        and received.objects[0].details["instances"] == "12"
    )
    assert received.objects[1].id == "P-17" and received.objects[1].name == "Rahimi^Sara"
    assert records[2].outcome == 4
    again.close()


def test_a_disk_that_refuses_writes_keeps_records_in_memory_then_writes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    blocked = tmp_path / "audit"
    blocked.write_text("a file where the folder should be")  # every open fails, for real
    trail = AuditTrail(blocked / "trail.sqlite", clock=clock, events=EVENTS, memory=3)
    for _ in range(5):
        trail.record(login(clock))
    assert trail.waiting() == 3 and trail.after(0) == []
    assert any("audit trail: cannot open" in r.getMessage() for r in caplog.records)

    blocked.unlink()  # the disk takes writes again
    assert trail.flush()
    records = trail.after(0)
    lost = records[0]
    assert lost.event.code == "110113" and lost.types[0].code == "110139"
    assert "2 audit record(s) could not be kept" in lost.outcome_text  # said, not dropped
    assert [r.event.code for r in records[1:]] == ["110114"] * 3
    trail.close()


def test_unsent_records_are_kept_past_the_bound_until_a_hard_cap_which_is_recorded(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    trail = AuditTrail(
        tmp_path / "trail.sqlite", clock=clock, events=EVENTS, keep=5, destinations=("hub",)
    )
    for _ in range(9):
        trail.record(login(clock))
    assert len(trail.after(0, limit=100)) == 9  # the hub has none: nothing goes
    trail.sent("hub", 9)
    trail.record(login(clock))
    assert [r.seq for r in trail.after(0, limit=100)] == [6, 7, 8, 9, 10]  # sent: trimmed

    for _ in range(22):  # the hub takes nothing more; past twice the bound the oldest go
        trail.record(login(clock))
    records = trail.after(0, limit=100)
    assert len(records) <= 2 * 5 + 1
    notices = [r for r in records if "removed unsent" in r.outcome_text]
    # One notice per bound's worth of records cut, not one per record.
    assert 1 <= len(notices) <= 2 and all(r.event.code == "110113" for r in notices)
    # Each says how many unsent records its cut removed (a bound's worth, about five here).
    assert all(int(r.outcome_text.split()[0]) >= 2 for r in notices)
    trail.close()


def test_the_audit_message_is_dicom_xml() -> None:
    event = EVENTS.received(0.0, Actor("CT1", "10.0.0.5"), STUDY)
    root = xml(audit_message(event))
    assert root.tag == "AuditMessage"
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "C"
    assert ident.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    sender, _box = root.findall("ActiveParticipant")
    assert sender.get("UserID") == "CT1" and sender.get("NetworkAccessPointID") == "10.0.0.5"
    assert sender.find("RoleIDCode").get("csd-code") == "110153"  # type: ignore[union-attr]
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "afra-3fa9c1"  # type: ignore[union-attr]
    study = root.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == STUDY.study_uid


# -- to a real audit repository ------------------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[tuple[Rsyslog, HubCA]]:
    ca = HubCA(tmp_path / "repo-ca", hub_name="Audit repository", server_names=("127.0.0.1",))
    with Rsyslog(
        tmp_path / "rsyslog", ca=ca.ca_cert_path, cert=ca.server_cert_path, key=ca.server_key_path
    ) as server:
        yield server, ca


def test_records_reach_an_audit_repository_over_tls_in_order(
    repository: tuple[Rsyslog, HubCA], tmp_path: Path
) -> None:
    server, ca = repository
    clock = SystemClock()
    trail = AuditTrail(
        tmp_path / "trail.sqlite", clock=clock, events=EVENTS, destinations=("syslog",)
    )
    link = SyslogTls("127.0.0.1", server.port, ca_file=ca.ca_cert_path, hostname="afra-3fa9c1")
    forwarder = Forwarder(
        trail, "syslog", link.send, clock=clock, retry_base=0.05, close=link.close
    )
    forwarder.start()
    try:
        trail.record(login(clock))
        trail.record(EVENTS.received(clock.time(), Actor("CT1", "10.0.0.5"), STUDY))
        wait_for(lambda: len(server.messages()) == 2, timeout=30, what="two messages at rsyslog")
        first, second = server.messages()
        assert first.startswith("<85>1 ") and " afra-3fa9c1 afra - IHE+RFC-3881 - " in first
        body = second.split(" IHE+RFC-3881 - ", 1)[1].encode().removeprefix(BOM)
        assert xml(body).find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
        wait_for(lambda: trail.cursor("syslog") == 2, timeout=10, what="the cursor at 2")

        server.stop()  # the repository goes away: records wait on the box, then follow
        trail.record(login(clock, ok=False))
        wait_for(lambda: forwarder.failures > 0, timeout=30, what="a failed send")
        assert trail.cursor("syslog") == 2
        server.start()
        wait_for(lambda: len(server.messages()) == 3, timeout=60, what="the third message")
        assert 'EventOutcomeIndicator="4"' in server.messages()[2]
    finally:
        forwarder.stop()
        trail.close()


def test_a_repository_with_a_certificate_from_another_ca_gets_nothing(
    repository: tuple[Rsyslog, HubCA], tmp_path: Path
) -> None:
    server, _ca = repository
    other = HubCA(tmp_path / "other-ca", hub_name="Someone else")
    clock = SystemClock()
    trail = AuditTrail(
        tmp_path / "trail.sqlite", clock=clock, events=EVENTS, destinations=("syslog",)
    )
    link = SyslogTls("127.0.0.1", server.port, ca_file=other.ca_cert_path, hostname="afra-3fa9c1")
    forwarder = Forwarder(trail, "syslog", link.send, clock=clock, retry_base=0.05)
    trail.record(login(clock))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        forwarder.step()
    assert trail.cursor("syslog") == 0 and server.messages() == []
    trail.close()


def test_a_destination_that_takes_nothing_is_a_failure_not_a_loop(tmp_path: Path) -> None:
    clock = FakeClock()
    trail = AuditTrail(tmp_path / "trail.sqlite", clock=clock, events=EVENTS, destinations=("hub",))
    trail.record(login(clock))
    calls: list[int] = []

    def stuck(events: object) -> int:
        calls.append(1)
        return 0  # "I hold nothing of it"

    forwarder = Forwarder(trail, "hub", stuck, clock=clock)
    with pytest.raises(DestinationStuck, match="holds only up to 0"):
        forwarder.step()  # the thread backs off on this, as on any failure
    assert calls == [1] and trail.cursor("hub") == 0
    trail.close()
