"""Fixtures for the uplink: a real reference hub, a box enrolled with it, and helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance, build_appliance
from afra.uplink.client import HubUnavailable, enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer
from tests.conftest import BoxFactory, make_config, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import storescu

LOOPBACK = "127.0.0.1"


@pytest.fixture
def enrolled_box(tmp_path: Path, clock: FakeClock) -> Iterator[BoxFactory]:
    """Enrol a box with a hub (optionally through another URL), then build and start it."""
    boxes: list[Appliance] = []

    def factory(
        server: HubServer, *, via: str | None = None, **sections: dict[str, object]
    ) -> Appliance:
        data = tmp_path / "box"
        identity = NodeIdentity(data / "identity")
        if not identity.enrolled:
            enrol(
                identity,
                hub_url=via or server.url,
                pairing_code=server.new_pairing_code(),
                ca_file=Path(server.ca_pem_path),
                node_name="afra-test",
            )
        hub_settings = {
            "retry_base": 1.0,
            "retry_cap": 2.0,
            "heartbeat_interval": 3600.0,
            "command_poll_s": 1,
        }
        hub_settings.update(sections.pop("hub", {}))  # type: ignore[arg-type]
        config = make_config(data, study={"stable_age": 5}, hub=hub_settings, **sections)
        box = build_appliance(config, clock=clock)
        box.uplink.settings = box.uplink.settings.__class__(
            **{**box.uplink.settings.__dict__, "idle_interval": 0.05}
        )
        box.start()
        boxes.append(box)
        return box

    yield factory
    for box in boxes:
        box.close()


def send_study(box: Appliance, tmp_path: Path, name: str, n: int = 6, size: int = 64) -> list[Path]:
    files = make_ct_series(tmp_path / name, n=n, rows=size, cols=size, patient_id=name)
    storescu(LOOPBACK, box.dicom.port, files)
    return files


def the_study(box: Appliance, files: list[Path]) -> object:
    uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return next(s for s in box.index.studies() if s.study_uid == uid)


def complete_and_deliver(box: Appliance, clock: FakeClock, files: list[Path]) -> object:
    clock.advance(10)  # past the stable age: the completion thread marks it complete
    wait_for(lambda: the_study(box, files).state == "delivered", what="delivery")  # type: ignore[attr-defined]
    return the_study(box, files)


def assert_hub_holds(hub: HubServer, box: Appliance, study: object, files: list[Path]) -> None:
    [entry] = [s for s in hub.studies() if s["medis_code"] == study.medis_code]  # type: ignore[attr-defined]
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        kept = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        assert hub.instance_bytes(entry["upload_id"], ds.SOPInstanceUID) == kept.read_bytes()


def stored_rel(box: Appliance, path: Path) -> str:
    """Where the box keeps the instance of a file it was sent."""
    ds = dcmread(path, stop_before_pixels=True)
    return box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)


def upload_fails_at(box: Appliance, clock: FakeClock, files: list[Path], call: str) -> None:
    """The study completed, coded and registered with the hub, then the link went down at
    the hub client's `call` ("put_part": no part taken; "commit": every part taken)."""

    def down(*_args: object, **_kwargs: object) -> None:
        raise HubUnavailable("the link went down")

    assert box.uplink.client is not None
    setattr(box.uplink.client, call, down)
    clock.advance(10)
    wait_for(lambda: the_study(box, files).attempts >= 1, what="an upload that failed")  # type: ignore[attr-defined]
    assert the_study(box, files).state == "uploading"  # type: ignore[attr-defined]


def lose_file(box: Appliance, sent: Path) -> str:
    """Stop the box and take the instance's file from the device, as a failing card does."""
    rel = stored_rel(box, sent)
    box.close()
    box.spool.absolute(rel).unlink()
    return rel
