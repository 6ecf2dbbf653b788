"""The health model: conditions in, the worst state and every reason out; and its checks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afra.health import (
    STATES,
    Health,
    HealthMonitor,
    IdentityProbe,
    StartupFiles,
    StartupFilesProbe,
    StorageProbe,
    UnknownCondition,
    read_status,
)
from afra.uplink.identity import NodeIdentity
from tests.disks import tmpfs
from tests.fakes import FakeClock, self_signed_pem


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(clock)


def test_a_fresh_box_with_nothing_wrong_is_healthy(health: Health) -> None:
    assert health.state == "healthy"
    assert health.reasons == []
    assert health.snapshot()["summary"] == STATES["healthy"].summary


def test_the_worst_condition_wins_and_every_reason_is_kept(health: Health) -> None:
    health.set("hub_unreachable", True, "connection refused")
    assert health.state == "degraded"
    health.set("storage_unwritable", True, "read-only file system")
    health.set("disk_warning", True)
    assert health.state == "failed"
    assert [r.condition for r in health.reasons] == [
        "storage_unwritable",
        "hub_unreachable",
        "disk_warning",
    ]
    assert health.reasons[1].detail == "connection refused"
    assert health.reasons[2].detail == "the storage device is nearly full"  # default text

    health.set("storage_unwritable", False)
    assert health.state == "degraded"
    health.set("hub_unreachable", False)
    health.set("disk_warning", False)
    assert health.state == "healthy"


def test_locate_and_updating_outrank_a_failure_but_keep_it_listed(health: Health) -> None:
    health.set("cert_expired", True)
    health.set("updating", True)
    assert health.state == "updating"
    health.set("locating", True)
    assert health.state == "locating"
    assert {r.state for r in health.reasons} == {"locating", "updating", "failed"}


def test_a_condition_held_by_two_sources_stays_until_both_clear_it(health: Health) -> None:
    health.set("unclaimed", True, "not enrolled", source="identity")
    health.set("unclaimed", True, "the wizard is not finished")  # the web wizard's own voice
    health.set("unclaimed", False)
    assert health.state == "unclaimed"
    assert [r.detail for r in health.reasons] == ["not enrolled"]
    health.set("unclaimed", False, source="identity")
    assert health.state == "healthy"


def test_timed_conditions_end_by_themselves(health: Health, clock: FakeClock) -> None:
    heard: list[str] = []
    health.subscribe(lambda h: heard.append(h.state))
    health.set("locating", True, for_seconds=60)
    clock.advance(59)
    assert health.state == "locating"
    assert health.remaining("locating") == pytest.approx(1)
    clock.advance(2)
    assert health.state == "healthy"
    assert heard == ["locating", "healthy"]


def test_listeners_hear_changes_once_and_cannot_break_the_model(health: Health) -> None:
    heard: list[str] = []

    def broken(_h: Health) -> None:
        raise RuntimeError("listener bug")

    health.subscribe(broken)
    unsubscribe = health.subscribe(lambda h: heard.append(h.state))
    health.set("pacs_unreachable", True, "refused")
    health.set("pacs_unreachable", True, "refused")  # the same again: no news
    health.set("pacs_unreachable", True, "timed out")  # a new detail is news
    unsubscribe()
    health.set("pacs_unreachable", False)
    assert heard == ["degraded", "degraded"]
    assert health.state == "healthy"


def test_an_unknown_condition_is_refused(health: Health) -> None:
    with pytest.raises(UnknownCondition, match="overheated"):
        health.set("overheated", True)
    with pytest.raises(ValueError):
        health.set("Healthy", True)


def test_the_snapshot_is_json(health: Health, clock: FakeClock) -> None:
    health.set("queue_stale", True, "3 studies waiting for 30 h")
    snap = json.loads(json.dumps(health.snapshot()))
    assert snap["state"] == "degraded"
    assert snap["since"] == clock.time()
    assert snap["reasons"] == [
        {
            "condition": "queue_stale",
            "state": "degraded",
            "detail": "3 studies waiting for 30 h",
            "source": "",
            "since": clock.time(),
        }
    ]


# -- storage, on a real (small) file system ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of its own, so that full and read-only are real, not pretended."""
    with tmpfs(tmp_path / "disk", 8) as mount:
        yield mount


def test_storage_below_the_floor_fails_and_nearly_full_degrades(
    small_disk: Path, health: Health
) -> None:
    probe = StorageProbe(small_disk, min_free_bytes=1 * 2**20, warning_percent=50)
    probe.check(health)
    assert health.state == "healthy"

    (small_disk / "big").write_bytes(b"\0" * 5 * 2**20)  # 5 of 8 MiB
    probe.check(health)
    assert health.state == "degraded"
    [reason] = health.reasons
    assert reason.condition == "disk_warning" and "% full" in reason.detail

    (small_disk / "bigger").write_bytes(b"\0" * (2 * 2**20 + 2**19))  # 0.5 MiB left
    probe.check(health)
    assert health.state == "failed"
    assert [r.condition for r in health.reasons] == ["disk_floor"]
    assert "the floor is 1 MB" in health.reasons[0].detail

    (small_disk / "big").unlink()
    (small_disk / "bigger").unlink()
    probe.check(health)
    assert health.state == "healthy"


def test_a_read_only_storage_device_fails(small_disk: Path, health: Health) -> None:
    probe = StorageProbe(small_disk, min_free_bytes=0, warning_percent=90)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    probe.check(health)
    assert health.state == "failed"
    [reason] = health.reasons
    assert reason.condition == "storage_unwritable"
    assert "Read-only file system" in reason.detail
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    probe.check(health)
    assert health.state == "healthy"


# -- the certificate ----------------------------------------------------------------------------


def _enrol_with_cert(identity: NodeIdentity, not_after: float) -> None:
    """Identity files as enrolment leaves them, with a certificate ending at `not_after`."""
    identity.ensure_key()
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pem = self_signed_pem(key, not_after)
    identity.save_enrolment(node_id="n1", hub_url="https://hub.test", cert_pem=pem, ca_pem=pem)


def test_unclaimed_until_enrolled_then_the_certificate_ages(
    tmp_path: Path, health: Health, clock: FakeClock
) -> None:
    identity = NodeIdentity(tmp_path / "identity")
    probe = IdentityProbe(identity, clock=clock, warning_days=14)
    probe.check(health)
    assert health.state == "unclaimed"

    _enrol_with_cert(identity, clock.time() + 20 * 86400)
    probe.check(health)
    assert health.state == "healthy"

    clock.advance(10 * 86400)
    probe.check(health)
    assert health.state == "degraded"
    assert "expires in 10 day(s)" in health.reasons[0].detail

    clock.advance(11 * 86400)
    probe.check(health)
    assert health.state == "failed"
    assert [r.condition for r in health.reasons] == ["cert_expired"]


# -- the monitor ----------------------------------------------------------------------------------


class CountingProbe:
    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self.runs = 0

    def check(self, health: Health) -> None:
        self.runs += 1
        health.set("pacs_unreachable", self.runs % 2 == 1, f"run {self.runs}")


def test_the_monitor_runs_each_check_on_its_own_interval_and_keeps_the_status_file(
    tmp_path: Path, health: Health, clock: FakeClock
) -> None:
    fast, slow = CountingProbe("fast", 10), CountingProbe("slow", 300)
    monitor = HealthMonitor(health, [fast, slow], clock=clock, status_path=tmp_path / "status.json")
    assert monitor.run_once() == 2
    assert monitor.run_once() == 0
    clock.advance(10)
    assert monitor.run_once() == 1
    clock.advance(290)
    assert monitor.run_once() == 2
    assert (fast.runs, slow.runs) == (3, 2)
    status = read_status(tmp_path)
    assert status is not None and status["health"] == health.snapshot()
    monitor.stop()
    assert read_status(tmp_path) is None  # a stopped box leaves no status that looks alive


def test_what_start_up_left_is_reviewed_until_each_file_is_resolved(
    health: Health, tmp_path: Path
) -> None:
    """Each file the start left is resolved its own way: a missing one when it is back or no
    longer indexed, a left one when it is indexed or gone; resolved ones are not looked at
    again, and with none left the index is not read at all."""
    on_disk = {"objects/left-a", "objects/left-b"}
    indexed = {"objects/gone-a", "objects/gone-b"}
    asked: list[list[str]] = []

    def indexed_among(paths: Sequence[str]) -> set[str]:
        asked.append(sorted(paths))
        return indexed & set(paths)

    probe = StartupFilesProbe(
        lambda: StartupFiles(
            ["objects/gone-a", "objects/gone-b"],
            [("objects/left-a", "unreadable"), ("objects/left-b", "refused")],
        ),
        exists=lambda rel: rel in on_disk,
        indexed_among=indexed_among,
    )
    probe.check(health)
    assert health.is_active("files_need_review")
    assert [f["path"] for f in probe.unresolved()] == sorted(indexed | on_disk)
    on_disk.add("objects/gone-a")  # put back by a copy sent again
    indexed.discard("objects/gone-b")  # its row went (its study removed)
    indexed.add("objects/left-a")  # indexed by a copy sent again
    on_disk.discard("objects/left-b")  # moved away by hand
    probe.check(health)
    assert not health.is_active("files_need_review")
    assert probe.unresolved() == []
    asked.clear()
    on_disk.discard("objects/gone-a")  # gone again: not the start's report any more
    probe.check(health)
    assert asked == [] and not health.is_active("files_need_review")
