"""The panel inside a real box: DICOM traffic, the factory reset, `afra status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afra.app import Appliance
from afra.cli import main
from medix.hub.server import HubServer
from tests.conftest import LOOPBACK, BoxFactory, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.panel.rig import BUTTON, GPIO
from tests.peers import storescu


def pin(box: Appliance, gpio: int) -> object:
    assert box.panel is not None and box.panel.pin_factory is not None
    return box.panel.pin_factory.pin(f"GPIO{gpio}")


def led(box: Appliance, name: str) -> bool:
    assert box.panel is not None
    box.panel.tick()
    return bool(pin(box, GPIO[name]).state)  # type: ignore[attr-defined]


def test_received_objects_flicker_the_activity_led(
    make_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = make_box()
    assert not led(box, "activity")
    storescu(LOOPBACK, box.dicom.port, make_ct_series(tmp_path / "s", n=2, rows=16, cols=16))
    assert led(box, "activity")
    clock.advance(1)
    assert not led(box, "activity")


def test_a_ten_second_hold_resets_configuration_and_keeps_every_study(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    data = box.spool.root
    files = make_ct_series(tmp_path / "s", n=3, rows=16, cols=16)
    storescu(LOOPBACK, box.dicom.port, files)
    (data / "web").mkdir()
    (data / "web" / "admin.json").write_text('{"password": "hash"}')
    (data / "web" / "setup-code.hash").write_text("the label's code, hashed")
    (data / "settings.toml").write_text("[dicom]\nae_title = 'SITE'\n")
    (data / "policy.json").write_text("{}")
    studies_before = [(s.study_uid, s.instance_count, s.bytes) for s in box.index.studies()]
    kept = {p: p.read_bytes() for p in (data / "objects").rglob("*.dcm")}
    assert len(kept) == 3 and (data / "identity" / "node.key").exists()

    button = pin(box, BUTTON)
    button.drive_low()  # type: ignore[attr-defined]
    clock.advance(11)
    button.drive_high()  # type: ignore[attr-defined]
    assert box.panel is not None
    box.panel.tick()

    assert box.restart_requested.is_set()
    for gone in ("identity", "web/admin.json", "settings.toml", "policy.json"):
        assert not (data / gone).exists(), gone
    # The setup code printed on the box's label still claims it.
    assert [p.name for p in (data / "web").iterdir()] == ["setup-code.hash"]
    # (the 11 s held also let the study complete: its state may move on, its contents may not)
    assert [(s.study_uid, s.instance_count, s.bytes) for s in box.index.studies()] == (
        studies_before
    )
    assert {p: p.read_bytes() for p in (data / "objects").rglob("*.dcm")} == kept
    assert (data / "index.sqlite").exists()
    assert box.health.state == "unclaimed"


def test_the_hubs_locate_command_runs_the_locate_pattern(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock
) -> None:
    box = enrolled_box(hub)
    node = hub.nodes()[0]["id"]
    hub.queue_command(node, "locate", {"seconds": 90})
    wait_for(lambda: box.health.state == "locating", what="the locate command")
    assert box.panel is not None
    patterns = [box.panel.snapshot()["leds"][n]["pattern"] for n in GPIO]
    assert patterns == ["chase_1", "chase_2", "chase_3"]
    clock.advance(91)
    assert box.health.state != "locating"
    assert box.panel.snapshot()["leds"]["health"]["pattern"] != "chase_1"


def test_afra_status_shows_the_health_and_the_leds_of_the_running_box(
    make_box: BoxFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    box = make_box()
    data = f'box.data_dir="{box.spool.root}"'
    assert box.monitor is not None
    wait_for(lambda: box.health.state == "unclaimed", what="the first health pass")
    box.monitor.write_status(force=True)

    assert main(["--set", data, "status"]) == 0
    text = capsys.readouterr().out
    assert "UNCLAIMED - waiting for setup" in text
    assert "unclaimed  unclaimed           not enrolled with a Medix hub" in text
    assert "activity  amber  ( ) off" in text
    assert "health    green" in text and "double" in text
    assert "setup window closed" in text

    box.panel.locate(60)  # type: ignore[union-attr]
    box.monitor.write_status()
    assert main(["--set", data, "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is True and doc["health"]["state"] == "locating"
    leds = doc["panel"]["leds"]
    assert [leds[n]["pattern"] for n in ("health", "activity", "uplink")] == [
        "chase_1",
        "chase_2",
        "chase_3",
    ]
    assert sum(leds[n]["lit"] for n in leds) == 1  # the light is on one LED at a time

    box.close()
    assert main(["--set", data, "status"]) == 3
    assert "not running" in capsys.readouterr().out
