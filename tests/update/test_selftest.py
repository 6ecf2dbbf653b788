"""`afra selftest` against a real running box (its SCP, its setup page, its index), and the
verdict it gives after an update (with RAUC and the reboot faked: CI has no A/B disk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE

from afra.app import Appliance, build_appliance
from afra.clock import SystemClock
from afra.store.index import SELFTEST_UID_PREFIX
from afra.system.release import Release
from afra.update.rauc import UpdateError
from afra.update.selftest import Check as SelfCheck
from afra.update.selftest import Report, SelfTest, confirmed_slot, decide, describe_unit
from afra.update.status import UpdateRecord
from afra_web.server import start_web
from tests.conftest import make_config
from tests.dicom.conftest import refusal
from tests.fakes import FakeRauc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Appliance, Any]]:
    """A box as on a card: no DICOM peer configured yet, its setup page up, the real clock
    (the self-test reads the status file another process writes)."""
    config = make_config(
        tmp_path / "box",
        dicom={"allow_any_peer": False},
        web={"bind": "127.0.0.1", "port": 0},
    )
    box = build_appliance(config, clock=SystemClock())
    box.start()
    web = start_web(box)
    try:
        assert box.monitor is not None
        box.monitor.run_once()
        box.health.set("booting", False)
        box.monitor.write_status(force=True)
        yield box, web
    finally:
        web.stop()
        box.close()


def selftest(box: Appliance, web: Any, **kw: Any) -> SelfTest:
    return SelfTest(
        box.config,
        units=(),
        dicom_port=box.dicom.port,
        web_port=web.port,
        sleep=lambda s: None,
        **kw,
    )


def test_every_check_passes_on_a_working_box_and_nothing_is_left_behind(
    running: tuple[Appliance, Any],
) -> None:
    box, web = running
    report = selftest(box, web).run(timeout=30, hub_wait=0)
    assert [c.name for c in report.checks] == ["service", "web", "echo", "store", "index"]
    assert report.ok, report.as_dict()
    # The object went through the real receive path and is gone again: not in the index,
    # not in the spool, never a study for completion, a code or the hub.
    assert box.index.studies(10) == []
    assert list(box.spool.iter_objects()) == []


def test_a_box_whose_dicom_service_is_down_fails_echo_and_store(
    running: tuple[Appliance, Any],
) -> None:
    box, web = running
    port = box.dicom.port
    box.dicom.stop()
    report = SelfTest(
        box.config, units=(), dicom_port=port, web_port=web.port, sleep=lambda s: None
    ).run(timeout=0, hub_wait=0)
    failed = {c.name for c in report.failures}
    assert failed == {"echo", "store"}, report.as_dict()
    assert not report.ok


def test_a_unit_in_a_crash_loop_fails_at_once_and_one_still_starting_is_waited_for(
    running: tuple[Appliance, Any],
) -> None:
    box, web = running
    states = iter(["activating (start, 0 restarts)", "activating (start, 0 restarts)", "active"])
    clock = iter(range(1000))

    def test(unit_state: Any) -> SelfTest:
        return SelfTest(
            box.config,
            units=("afra.service",),
            unit_state=unit_state,
            dicom_port=box.dicom.port,
            web_port=web.port,
            sleep=lambda s: None,
            monotonic=lambda: float(next(clock)),
        )

    looping = test(lambda unit: "activating (auto-restart, 3 restarts)").run(
        timeout=900, hub_wait=0
    )
    first = looping.checks[0]
    assert (first.ok, first.final) == (False, True)  # no 15 minutes of waiting for a crash loop
    assert first.detail == "afra.service is activating (auto-restart, 3 restarts)"
    starting = test(lambda unit: next(states)).run(timeout=900, hub_wait=0)
    assert starting.checks[0].ok  # a slow start (a large spool to check) is waited for


def test_systemds_answer_is_read_in_the_order_systemd_gives_it() -> None:
    # `systemctl show -p A -p B` prints the properties in the unit's order, not the asked one.
    assert describe_unit("NRestarts=0\nActiveState=active\nSubState=running\n") == "active"
    state = describe_unit("NRestarts=4\nActiveState=activating\nSubState=auto-restart\n")
    assert state == "activating (auto-restart, 4 restarts)"


def test_a_box_at_its_storage_floor_refuses_the_test_object_and_that_is_no_fault(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path / "full",
        storage={"min_free_mb": 2**40},  # more than any disk: the box is at its floor
        web={"enabled": False},
    )
    box = build_appliance(config, clock=SystemClock())
    box.start()
    try:
        assert box.monitor is not None
        box.monitor.run_once()
        box.health.set("booting", False)
        box.monitor.write_status(force=True)
        report = SelfTest(config, units=(), dicom_port=box.dicom.port, sleep=lambda s: None).run(
            timeout=30, hub_wait=0
        )
    finally:
        box.close()
    store = next(c for c in report.checks if c.name == "store")
    assert store.ok and "floor" in store.detail


def test_a_self_test_object_left_by_a_crash_is_never_completed_and_is_removed_next_time(
    running: tuple[Appliance, Any], tmp_path: Path
) -> None:
    box, web = running
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=SELFTEST_UID_PREFIX)
    ds.StudyInstanceUID = generate_uid(prefix=SELFTEST_UID_PREFIX)
    ds.SeriesInstanceUID = generate_uid(prefix=SELFTEST_UID_PREFIX)
    ds.PatientID = "AFRA-SELFTEST"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="AFRA-SELFTEST")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", box.dicom.port, ae_title=box.config.dicom.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert len(box.index.studies(10)) == 1
    assert box.index.due_studies(received_before=1e12) == []  # completion skips it
    assert selftest(box, web).run(timeout=30, hub_wait=0).ok
    assert box.index.studies(10) == []


def test_a_peer_pretending_to_be_the_self_test_from_the_lan_is_refused(
    running: tuple[Appliance, Any],
) -> None:
    box, _web = running
    # 127.0.0.5 is not the box's own address: the peer list applies, and it is empty.
    # rejected-permanent, service-user, calling-AE-title-not-recognized
    assert refusal(box.dicom.port, "AFRA-SELFTEST", source="127.0.0.5") == (1, 1, 3)


# -- the verdict ---------------------------------------------------------------------------------


def _report(ok: bool) -> Report:
    checks = [SelfCheck("service", True, "running"), SelfCheck("echo", ok, "C-ECHO status 0x0")]
    return Report(checks=checks, at=1.0)


def _record(tmp_path: Path, state: str, slot: str) -> UpdateRecord:
    record = UpdateRecord(tmp_path / "status.json", SystemClock())
    record.move("checking", from_version="1.0", source="hub")
    record.move("installing", version="1.1", slot=slot)
    record.move("rebooting")
    if state == "kept":
        record.move("trial")
        record.move("kept")
    return record


def _release(slot: str | None) -> Release:
    return Release(version="1.1", image=slot is not None, compatible="afra-rpi4-arm64", slot=slot)


def test_an_update_that_passes_its_trial_is_kept(tmp_path: Path) -> None:
    record, rauc = _record(tmp_path, "rebooting", "B"), FakeRauc(booted="B")
    assert decide(_report(True), record=record, rauc=rauc, release=_release("B")) == "kept"
    assert rauc.calls == [("mark", "active", "booted")]  # first in line, and good
    assert record.current.state == "kept"
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "kept"
    assert confirmed_slot(tmp_path) == "B"


def test_an_update_that_fails_its_trial_is_marked_bad_and_the_box_restarts(
    tmp_path: Path,
) -> None:
    record, rauc = _record(tmp_path, "rebooting", "B"), FakeRauc(booted="B")
    assert decide(_report(False), record=record, rauc=rauc, release=_release("B")) == "rolled_back"
    assert rauc.calls == [("mark", "bad", "booted"), ("reboot",)]
    assert record.current.state == "rolled_back"
    assert "echo: C-ECHO" in record.current.message and "1.0" in record.current.message


def test_a_boot_on_the_old_slot_while_the_new_one_waits_means_it_never_came_up(
    tmp_path: Path,
) -> None:
    record, rauc = _record(tmp_path, "rebooting", "B"), FakeRauc(booted="A")
    assert decide(_report(True), record=record, rauc=rauc, release=_release("A")) == "rolled_back"
    assert rauc.calls == [("mark", "active", "booted")]  # A first again: B never comes back
    assert "did not pass its first start" in record.current.message


def test_an_ordinary_boot_that_fails_keeps_its_slot(tmp_path: Path) -> None:
    record, rauc = _record(tmp_path, "kept", "B"), FakeRauc(booted="B")
    assert decide(_report(False), record=record, rauc=rauc, release=_release("B")) == "fail"
    assert rauc.calls == [("mark", "active", "booted")]  # no reboot: it would not mend it
    assert record.current.state == "kept"


def test_a_slot_the_box_never_kept_is_on_trial_even_without_a_record(tmp_path: Path) -> None:
    """An install that finished after the box's process died, or U-Boot going back to a slot
    whose rollback was cut off: whatever the record says, that slot must earn its place."""
    (tmp_path / "confirmed-slot").write_text("A\n")
    record, rauc = _record(tmp_path, "kept", "A"), FakeRauc(booted="B")
    assert decide(_report(False), record=record, rauc=rauc, release=_release("B")) == "rolled_back"
    assert rauc.calls == [("mark", "bad", "booted"), ("reboot",)]
    assert confirmed_slot(tmp_path) == "A"


class Refusing(FakeRauc):
    def mark(self, verdict: str, slot: str = "booted") -> None:
        raise UpdateError(f"rauc status mark-{verdict} booted failed: no D-Bus")


def test_a_failed_trial_restarts_even_when_rauc_cannot_mark_it_bad(tmp_path: Path) -> None:
    record, rauc = _record(tmp_path, "rebooting", "B"), Refusing(booted="B")
    assert decide(_report(False), record=record, rauc=rauc, release=_release("B")) == "rolled_back"
    # U-Boot takes an attempt at every boot: restarting rolls back all the same.
    assert rauc.calls == [("reboot",)]


def test_a_passing_trial_is_kept_only_once_rauc_marked_it(tmp_path: Path) -> None:
    record = _record(tmp_path, "rebooting", "B")
    with pytest.raises(UpdateError):
        decide(_report(True), record=record, rauc=Refusing(booted="B"), release=_release("B"))
    # Still on trial and not kept: the unit fails and the trial guard rolls back.
    assert record.current.state == "trial" and confirmed_slot(tmp_path) is None


def test_falling_back_from_a_kept_slot_that_stopped_starting_keeps_this_one(
    tmp_path: Path,
) -> None:
    """B was kept, then stopped starting; U-Boot spent its attempts and started A. A is the
    box's system now, even if its checks fail (the hub down, say): marking it bad would leave
    only the broken B."""
    (tmp_path / "confirmed-slot").write_text("B\n")
    record, rauc = _record(tmp_path, "kept", "B"), FakeRauc(booted="A", bad=("B",))
    assert decide(_report(False), record=record, rauc=rauc, release=_release("A")) == "fail"
    assert rauc.calls == [("mark", "active", "booted")]
    assert confirmed_slot(tmp_path) == "A"


def test_outside_an_image_nothing_is_marked(tmp_path: Path) -> None:
    record, rauc = _record(tmp_path, "kept", "B"), FakeRauc()
    assert decide(_report(True), record=record, rauc=rauc, release=_release(None)) == "pass"
    assert rauc.calls == []


# -- the guard for a self-test that gives no verdict ----------------------------------------------


@pytest.fixture
def guard(tmp_path: Path) -> Any:
    """The real trial-guard script, with stand-ins for rauc and systemctl that record calls,
    and the update record written by UpdateRecord itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("rauc", "systemctl"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        tool.chmod(0o755)

    def run(state: str | None, slot: str, cmdline: str, confirmed: str = "") -> list[str]:
        box = tmp_path / "box"
        shutil.rmtree(box, ignore_errors=True)
        box.mkdir()
        if state is not None:
            _record(box, state, slot)
        if confirmed:
            (box / "confirmed-slot").write_text(confirmed + "\n")
        (tmp_path / "cmdline").write_text(cmdline)
        calls.write_text("")
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "AFRA_RECORD": str(box / "status.json"),
            "AFRA_CONFIRMED": str(box / "confirmed-slot"),
            "AFRA_CMDLINE": str(tmp_path / "cmdline"),
        }
        subprocess.run(
            [str(REPO / "image-build/rootfs/usr/lib/afra/trial-guard")], env=env, check=True
        )
        return calls.read_text().splitlines()

    return run


def test_the_guard_rolls_back_a_trial_whose_self_test_crashed(guard: Any) -> None:
    calls = guard("rebooting", "B", "root=PARTUUID=x rauc.slot=B panic=10")
    assert calls == ["rauc status mark-bad booted", "systemctl reboot"]


def test_the_guard_leaves_an_ordinary_boot_alone(guard: Any) -> None:
    assert guard("kept", "B", "rauc.slot=B", confirmed="B") == []
    assert guard("rebooting", "B", "rauc.slot=A", confirmed="A") == []  # the old slot
    assert guard(None, "", "rauc.slot=B") == []
    # Not its business: a slot U-Boot fell back to (the Python self-test tells the cases).
    assert guard("kept", "A", "rauc.slot=B", confirmed="A") == []


def test_the_running_box_sees_the_verdict_the_self_test_wrote(tmp_path: Path) -> None:
    """The self-test is another process: the box's own record (heartbeat, dashboard) must
    read the file again once the verdict is written."""
    box_view = _record(tmp_path, "rebooting", "B")
    selftest_view = UpdateRecord(tmp_path / "status.json", SystemClock())
    decide(_report(True), record=selftest_view, rauc=FakeRauc(booted="B"), release=_release("B"))
    assert box_view.current.state == "kept"


@pytest.mark.parametrize(
    ("compatible", "version", "allowed"),
    [
        ("afra-rpi4-arm64", "1.2.0", True),
        ("afra-rpi4-arm64", "1.1.0", False),  # the running version again
        ("afra-rpi4-arm64", "1.0.9", False),  # older: a downgrade
        ("afra-rpi4-arm64", "not-a-version", False),
        ("afra-rpi5-arm64", "9.0.0", False),  # another system, whatever install arguments say
    ],
)
def test_raucs_pre_install_handler_lets_only_newer_bundles_for_this_system_in(
    tmp_path: Path, compatible: str, version: str, allowed: bool
) -> None:
    import sys

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n"
    )
    (tmp_path / "system.conf").write_text("[system]\ncompatible=afra-rpi4-arm64\n")
    (tmp_path / "os-release").write_text("ID=debian\nIMAGE_ID=afra\nIMAGE_VERSION=1.1.0\n")
    env = {
        **os.environ,
        "RAUC_BUNDLE_MOUNT_POINT": str(bundle),
        "RAUC_SYSTEM_CONFIG": str(tmp_path / "system.conf"),
        "AFRA_OS_RELEASE": str(tmp_path / "os-release"),
        "AFRA_PYTHON": sys.executable,
    }
    done = subprocess.run(
        [str(REPO / "image-build/rootfs/usr/lib/afra/rauc-pre-install")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode == 0) == allowed, done.stderr
