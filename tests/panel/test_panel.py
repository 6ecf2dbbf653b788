"""The front panel as a person sees it: LED levels on the (mock) pins over (fake) time."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from afra.errors import ConfigError
from afra.panel import load_layout, locate_handler, pin_factory_for
from afra.panel.layout import packaged_layout_path
from tests.panel.rig import Rig, flashes, make_rig, runs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rig() -> Rig:
    r = make_rig()
    yield r
    r.panel.stop()


def near(a: float, b: float) -> bool:
    return abs(a - b) <= 0.021


# -- the data file -----------------------------------------------------------------------------


def test_the_firmware_reads_the_hardware_folders_panel_file() -> None:
    hardware = (REPO / "hardware" / "panel.toml").read_bytes()
    assert packaged_layout_path().read_bytes() == hardware, (
        "firmware/afra/panel/panel.toml must be a copy of hardware/panel.toml: "
        "cp hardware/panel.toml firmware/afra/panel/panel.toml"
    )
    layout = load_layout(REPO / "hardware" / "panel.toml")
    assert {n: led.gpio for n, led in layout.leds.items()} == {
        "health": 17,
        "activity": 27,
        "uplink": 22,
    }
    # Each LED stays within the Pi's pad drive (the README's resistor table says why).
    assert all(2 <= led.current_ma() <= 6 for led in layout.leds.values())


def test_a_broken_panel_file_is_refused_with_every_problem_named(tmp_path: Path) -> None:
    data = (REPO / "hardware" / "panel.toml").read_text()
    data = data.replace("gpio = 27", "gpio = 17")  # activity on the health LED's pin
    data = data.replace("reset_hold_s = 10.0", "reset_hold_s = 2.0")
    data = data.replace('locating = { health = "chase_1"', 'locating = { health = "strobe"')
    bad = tmp_path / "panel.toml"
    bad.write_text(data)
    with pytest.raises(ConfigError) as err:
        load_layout(bad)
    text = str(err.value)
    assert "two parts share a GPIO" in text
    assert "button thresholds must increase" in text
    assert "modes.locating.health: no pattern named 'strobe'" in text
    assert tomllib.loads(data)  # still valid TOML: the checks are the panel's own


# -- what the LEDs show -------------------------------------------------------------------------


def test_healthy_is_a_steady_health_led(rig: Rig) -> None:
    assert all(rig.watch("health", 3))


def test_degraded_blinks_slowly_and_failed_fast(rig: Rig) -> None:
    rig.health.set("hub_unreachable", True)
    slow = runs(rig.watch("health", 4.0))
    assert [level for level, _ in slow] == [True, False, True, False]
    assert all(near(seconds, 1.0) for _, seconds in slow)

    rig.health.set("storage_unwritable", True)
    fast = runs(rig.watch("health", 1.2))
    assert [level for level, _ in fast] == [True, False] * 4
    assert all(near(seconds, 0.15) for _, seconds in fast)


def test_waiting_for_setup_is_a_double_blink(rig: Rig) -> None:
    rig.health.set("unclaimed", True)
    seen = runs(rig.watch("health", 3.0))
    assert [lv for lv, _ in seen[:4]] == [True, False, True, False]
    assert near(seen[0][1], 0.15) and near(seen[1][1], 0.15) and near(seen[3][1], 1.05)
    assert rig.leds()["uplink"] is False  # no hub yet


def test_booting_winks(rig: Rig) -> None:
    rig.health.set("booting", True)
    seen = runs(rig.watch("health", 2.0))
    assert [(lv, round(s, 1)) for lv, s in seen] == [(True, 0.1), (False, 0.9)] * 2


def test_the_setup_window_makes_health_and_uplink_take_turns(rig: Rig) -> None:
    rig.window.open(by="test")
    health, uplink = [], []
    for _ in range(200):
        rig.panel.tick()
        health.append(rig.lit("health"))
        uplink.append(rig.lit("uplink"))
        rig.clock.advance(0.01)
    assert all(h != u for h, u in zip(health, uplink, strict=True))
    assert flashes(health) == 2 and flashes(uplink) == 2


def test_locate_runs_a_light_across_all_three_leds_then_stops(rig: Rig) -> None:
    rig.panel.locate(5)
    order = []
    for _ in range(120):  # 1.2 s: two rounds
        rig.panel.tick()
        lit = [name for name, on in rig.leds().items() if on]
        assert len(lit) == 1
        if not order or order[-1] != lit[0]:
            order.append(lit[0])
        rig.clock.advance(0.01)
    assert order == ["health", "activity", "uplink"] * 2
    rig.clock.advance(5)
    assert all(rig.watch("health", 1))  # healthy again: steady
    assert rig.health.state == "healthy"


def test_activity_flickers_while_objects_come_and_then_goes_dark(rig: Rig) -> None:
    assert not any(rig.watch("activity", 0.5))
    rig.panel.activity()
    seen = rig.watch("activity", 1.0)
    assert flashes(seen[:30]) == 3  # 0.3 s of 0.05 s on, 0.05 s off
    assert not any(seen[30:])


def test_the_uplink_led_follows_the_hub_link_and_the_queue(rig: Rig) -> None:
    assert all(rig.watch("uplink", 0.5))  # hub reachable, queue young: steady
    rig.health.set("queue_stale", True)
    behind = runs(rig.watch("uplink", 4))
    assert [lv for lv, _ in behind] == [True, False, True, False]  # behind: slow blink
    rig.health.set("hub_unreachable", True)
    assert not any(rig.watch("uplink", 2))  # unreachable: dark


# -- the button --------------------------------------------------------------------------------


def blink_rate(rig: Rig, seconds: float) -> float:
    """Flashes per second of the health LED while the button is held."""
    return flashes(rig.watch("health", seconds)) / seconds


def test_holding_the_button_blinks_faster_past_each_threshold(rig: Rig) -> None:
    rig.press()
    announce = blink_rate(rig, 2.9)
    others_dark = not rig.lit("activity") and not rig.lit("uplink")
    rig.clock.advance(0.2)  # past 3 s
    setup = blink_rate(rig, 6.5)
    rig.clock.advance(0.5)  # past 10 s
    reset = blink_rate(rig, 5)
    rig.clock.advance(15)  # past 30 s: release would do nothing
    after_cancel = blink_rate(rig, 2)
    assert 0.5 < announce < setup < reset
    assert abs(announce - 1) < 0.1 and abs(setup - 2.5) < 0.2 and abs(reset - 8.3) < 0.5
    assert after_cancel == 0 and others_dark
    snap = rig.panel.snapshot()["button"]
    assert snap["pressed"] and snap["on_release"] == "cancel"


def test_a_short_press_announces_and_blinks_the_last_octet(rig: Rig) -> None:
    rig.hold(0.5)
    assert rig.announced == ["announce"]
    groups = [0]
    for level, seconds in runs(rig.watch("health", 12)):
        if level and seconds > 1:  # steady again: the announce is over
            break
        if level:
            groups[-1] += 1
        elif seconds > 1:  # the pause between two digits
            groups.append(0)
    assert groups == [3, 7]  # 192.168.1.37
    assert rig.health.state == "healthy" and rig.lit("health")  # back to steady after


def test_a_zero_digit_is_one_long_blink() -> None:
    rig = make_rig(address="10.0.0.105")
    rig.hold(0.5)
    on = [round(s, 1) for level, s in runs(rig.watch("health", 8)) if level]
    assert on[:7] == [0.3, 1.0, 0.3, 0.3, 0.3, 0.3, 0.3]  # 1, 0, 5
    rig.panel.stop()


def test_a_three_second_hold_opens_the_setup_window(rig: Rig) -> None:
    rig.hold(4)
    assert rig.window.is_open() and rig.window.remaining() == pytest.approx(600)
    assert rig.health.state == "setup_open"
    assert rig.announced == [] and rig.resets == []
    rig.clock.advance(601)
    assert not rig.window.is_open()
    assert rig.health.state == "healthy"


def test_a_ten_second_hold_asks_for_the_factory_reset(rig: Rig) -> None:
    rig.hold(11)
    assert rig.resets == ["reset"]
    assert not rig.window.is_open() and rig.announced == []


def test_a_stuck_button_and_a_bounce_do_nothing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "afra.panel")
    rig.hold(0.02)
    rig.hold(45)
    assert rig.resets == [] and rig.announced == [] and not rig.window.is_open()
    assert "nothing done (stuck button?)" in caplog.text


# -- locate from the hub, the pin factory --------------------------------------------------------


def test_the_locate_handler_checks_its_arguments(rig: Rig) -> None:
    locate = locate_handler(rig.panel)
    assert locate({"seconds": 30}) == {}
    assert rig.health.state == "locating"
    assert rig.panel.snapshot()["locate_remaining_s"] == 30
    for bad, why in (({"seconds": 0}, "1 to 3600 seconds"), ({"minutes": 1}, "minutes")):
        with pytest.raises(ValueError, match=why):  # the command channel answers "invalid"
            locate(bad)


def test_without_gpio_the_panel_runs_on_mock_pins_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory, real = pin_factory_for("auto")
    try:
        if not real:  # this machine is not a Pi (CI): mock pins, and one line in the log
            assert isinstance(factory, MockFactory)
            assert "no GPIO on this machine" in caplog.text
    finally:
        factory.close()
    mock, real = pin_factory_for("mock")
    assert isinstance(mock, MockFactory) and real is False
