"""System updates end to end on this machine: real RAUC bundles (signed with the box's key and
with another), checked by the real `rauc info`; offered by a real reference hub and fetched
over the node's mutual TLS; uploaded on the dashboard. Only the write into the other slot
and the reboot are faked (CI has no A/B disk)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afra.app import Appliance, build_appliance
from afra.system.release import Release
from afra.update.rauc import BundleRefused, RaucCli
from afra.uplink.client import enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer
from tests.bundles import COMPATIBLE
from tests.conftest import make_config
from tests.fakes import FakeClock, FakeRauc

RUNNING = Release(version="1.0.0", image=True, compatible=COMPATIBLE, slot="A")


def test_rauc_info_reads_a_bundle_signed_with_the_box_key(bundles: dict[str, Path]) -> None:
    info = RaucCli(conf=bundles["conf"]).info(bundles["good"])
    assert (info.compatible, info.version) == (COMPATIBLE, "1.1.0")
    assert set(info.images) == {"rootfs", "kernel"}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("foreign", "not signed with this box's update key"),
        ("garbage", "not an AFRA update bundle"),
    ],
)
def test_rauc_info_refuses_what_the_box_must_not_install(
    bundles: dict[str, Path], name: str, says: str
) -> None:
    with pytest.raises(BundleRefused, match=says):
        RaucCli(conf=bundles["conf"]).info(bundles[name])


# -- the manager, inside a box ---------------------------------------------------------------


BoxMaker = Callable[..., tuple[Appliance, FakeRauc]]


@pytest.fixture
def make(tmp_path: Path, clock: FakeClock, bundles: dict[str, Path]) -> Iterator[BoxMaker]:
    made: list[Appliance] = []

    def factory(hub: HubServer | None = None, **fake: Any) -> tuple[Appliance, FakeRauc]:
        data = tmp_path / "box"
        if hub is not None:
            enrol(
                NodeIdentity(data / "identity"),
                hub_url=hub.url,
                pairing_code=hub.new_pairing_code(),
                ca_file=Path(hub.ca_pem_path),
                node_name="afra-test",
            )
        checker = RaucCli(conf=bundles["conf"])
        rauc = FakeRauc(booted="A", info=checker.info, **fake)
        box = build_appliance(
            make_config(data, update={"retry_after": 600}), clock=clock, rauc=rauc, release=RUNNING
        )
        made.append(box)
        return box, rauc

    yield factory
    for box in made:
        box.close()


def offer(hub: HubServer, bundle: Path, version: str) -> None:
    with bundle.open("rb") as fp:
        found = hub.hub.add_update(
            iter(lambda: fp.read(65536), b""), version=version, compatible=COMPATIBLE, limit=2**30
        )
    hub.hub.publish_update(found)


def test_an_update_offered_by_the_hub_is_fetched_checked_installed_and_restarted_into(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, rauc = make(hub)
    offer(hub, bundles["good"], "1.1.0")
    box.uplink.heartbeat()  # the policy with the offer arrives
    assert box.updates is not None and box.updates.poll_once()
    assert rauc.installed == [bundles["good"].read_bytes()]  # the hub's bytes, whole
    assert rauc.calls[-1] == ("reboot",)
    status = box.updates.status
    assert (status.state, status.version, status.slot, status.source) == (
        "rebooting", "1.1.0", "B", "hub"
    )  # fmt: skip
    assert box.health.state == "updating"  # the panel says: do not unplug
    assert list((box.spool.root / "update/incoming").iterdir()) == []  # the bundle is gone
    box.uplink.heartbeat()
    report = hub.hub.nodes().nodes[0].update
    assert report is not None and report.state == "rebooting" and report.version == "1.1.0"


def test_a_download_cut_off_is_resumed_where_it_stopped(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, rauc = make(hub)
    offer(hub, bundles["good"], "1.1.0")
    box.uplink.heartbeat()
    data = bundles["good"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    incoming = box.spool.root / "update/incoming"
    incoming.mkdir(parents=True)
    (incoming / f"{sha}.raucb.part").write_bytes(data[: len(data) // 2])
    (incoming / f"{'0' * 64}.raucb.part").write_bytes(b"an offer the hub has replaced")
    fetched: list[int] = []
    assert box.hub is not None
    download = box.hub.download

    def counting(path: str, dest: Path, **kw: Any) -> None:
        progress = kw.pop("progress")
        download(path, dest, progress=lambda done: (fetched.append(done), progress(done)), **kw)

    box.hub.download = counting  # type: ignore[method-assign]
    assert box.updates is not None and box.updates.poll_once()
    assert rauc.installed == [data]
    assert fetched and min(fetched) > len(data) // 2  # only the second half travelled
    assert not (incoming / f"{'0' * 64}.raucb.part").exists()


def test_a_bundle_signed_with_another_key_is_refused_and_never_fetched_again(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, rauc = make(hub)
    offer(hub, bundles["foreign"], "1.2.0")
    box.uplink.heartbeat()
    assert box.updates is not None and box.updates.poll_once()
    status = box.updates.status
    assert status.state == "refused"
    assert "not signed with this box's update key" in status.message
    assert not [c for c in rauc.calls if c[0] in ("install", "reboot")]
    assert box.health.state != "updating"
    assert not box.updates.poll_once()  # the same bundle is not tried again by itself
    assert box.audit is not None  # and the audit trail says who offered what, and the outcome
    [refused] = [e for e in box.audit.trail.after(0) if "update refused" in e.outcome_text]
    assert refused.event.code == "110113" and refused.outcome == 4
    assert refused.participants[0].user_id == "hub"
    assert refused.objects[0].details["version"] == "1.2.0"
    # ...nor after something else was tried in between (the record's history remembers).
    path = box.updates.receive([bundles["older"].read_bytes()], None)
    assert box.updates.accept_upload(path).state == "refused"
    assert not box.updates.poll_once()


@pytest.mark.parametrize(
    ("name", "version", "why"),
    [
        ("older", "0.9.0", "only a newer version"),
        ("pi5", "1.1.0", "the bundle is for afra-rpi5-arm64"),
    ],
)
def test_an_upload_for_another_system_or_an_older_version_is_refused(
    make: BoxMaker, bundles: dict[str, Path], name: str, version: str, why: str
) -> None:
    box, rauc = make()
    assert box.updates is not None
    path = box.updates.receive([bundles[name].read_bytes()], None)
    after = box.updates.accept_upload(path)
    assert after.state == "refused" and why in after.message
    assert not path.exists()
    assert ("install", path.name) not in rauc.calls


def test_offers_the_box_cannot_use_are_not_downloaded(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, rauc = make(hub)
    with bundles["pi5"].open("rb") as fp:
        other = hub.hub.add_update(
            iter(lambda: fp.read(65536), b""),
            version="1.1.0",
            compatible="afra-rpi5-arm64",
            limit=2**30,
        )
    hub.hub.publish_update(other)
    box.uplink.heartbeat()
    assert box.updates is not None and not box.updates.poll_once()
    assert box.updates.status.state == "idle" and rauc.calls == []


def test_a_failed_install_is_tried_again_only_after_a_while(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path], clock: FakeClock
) -> None:
    box, rauc = make(hub, install_error="Failed to write slot rootfs.1: No space left")
    offer(hub, bundles["good"], "1.1.0")
    box.uplink.heartbeat()
    assert box.updates is not None and box.updates.poll_once()
    assert box.updates.status.state == "failed"
    assert "No space left" in box.updates.status.message
    assert box.health.state != "updating"
    assert not box.updates.poll_once()
    clock.advance(601)
    assert box.updates.poll_once()
    assert [c[0] for c in rauc.calls].count("install") == 2


def test_an_install_rauc_finished_after_afra_stopped_restarts_into_its_trial(
    make: BoxMaker,
) -> None:
    box, _ = make()
    assert box.updates is not None
    box.updates.record.move("checking", source="hub")
    box.updates.record.move("installing", version="1.1.0", slot="B")
    again, rauc = make(primary="B")  # RAUC's service made B first in line meanwhile
    assert again.updates is not None
    again.updates.recover()
    assert again.updates.status.state == "rebooting" and rauc.calls == [("reboot",)]


def test_an_install_cut_off_by_a_power_loss_is_reported_as_failed(
    make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, _rauc = make()
    assert box.updates is not None
    box.updates.record.move("checking", source="dashboard")
    box.updates.record.move("installing", version="1.1.0", slot="B")
    again, _ = make()  # the next start on the same data partition
    assert again.updates is not None
    again.updates.recover()
    assert again.updates.status.state == "failed"
    assert "interrupted by a restart" in again.updates.status.message


def test_the_restart_waits_until_no_study_is_arriving(
    make: BoxMaker, bundles: dict[str, Path], clock: FakeClock
) -> None:
    box, rauc = make()
    assert box.updates is not None
    arriving = iter([True, True, False])
    box.updates.quiet = lambda: not next(arriving)
    path = box.updates.receive([bundles["good"].read_bytes()], None)
    box.updates.accept_upload(path)
    assert box.updates._writer is not None
    box.updates._writer.join(timeout=30)
    assert rauc.calls[-1] == ("reboot",)
    assert next(arriving, "spent") == "spent"  # asked until the associations had ended


def test_a_restart_that_never_happened_is_asked_for_again(
    make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, _rauc = make()
    assert box.updates is not None
    box.updates.boot_id = lambda: "boot-1"
    path = box.updates.receive([bundles["good"].read_bytes()], None)
    box.updates.accept_upload(path)
    assert box.updates._writer is not None
    box.updates._writer.join(timeout=30)
    assert box.updates.status.state == "rebooting" and box.updates.status.boot_id == "boot-1"
    again, rauc_again = make()  # afra restarted; the machine did not
    assert again.updates is not None
    again.updates.boot_id = lambda: "boot-1"
    again.updates.recover()
    assert rauc_again.calls == [("reboot",)]
    after_reboot, rauc_later = make()
    assert after_reboot.updates is not None
    after_reboot.updates.boot_id = lambda: "boot-2"
    after_reboot.updates.recover()
    assert rauc_later.calls == []  # the self-test of that boot decides, not afra run


def test_an_offer_larger_than_the_box_takes_is_not_fetched(
    hub: HubServer, make: BoxMaker, bundles: dict[str, Path]
) -> None:
    box, rauc = make(hub)
    offer(hub, bundles["good"], "1.1.0")
    box.uplink.heartbeat()
    assert box.updates is not None
    box.updates.settings = box.updates.settings.model_copy(update={"max_bundle_mb": 16})
    huge = box.policy.current.update
    assert huge is not None
    box.policy._policy = box.policy.current.model_copy(
        update={"update": huge.model_copy(update={"size": 17 * 2**20})}
    )
    assert not box.updates.poll_once() and rauc.calls == []


def test_on_a_development_machine_there_are_no_updates(tmp_path: Path, clock: FakeClock) -> None:
    box = build_appliance(make_config(tmp_path / "box"), clock=clock)
    try:
        assert box.updates is not None and not box.updates.available
        assert box.update_report() is None
    finally:
        box.close()
