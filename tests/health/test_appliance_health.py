"""Health inside a real box: fed by the uplink, the queue and the PACS; reported to the hub."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from afra.app import Appliance
from afra.config import PacsSettings
from medix.hub.server import HubServer
from medix.models import Policy, Window
from tests.conftest import LOOPBACK, BoxFactory, wait_for
from tests.fakes import FakeClock
from tests.peers import free_port
from tests.uplink.conftest import send_study, the_study


def checks_after(box: Appliance, clock: FakeClock, seconds: float) -> None:
    """Let `seconds` pass, then make sure the health checks that came due have run."""
    clock.advance(seconds)
    assert box.monitor is not None
    box.monitor.run_once()


def conditions(box: Appliance) -> set[str]:
    return {r.condition for r in box.health.reasons}


def test_the_heartbeat_tells_the_hub_the_health_state(
    hub: HubServer,
    enrolled_box: BoxFactory,
    clock: FakeClock,
) -> None:
    box = enrolled_box(hub)
    # The uplink's own first heartbeat, made while the box was booting, has been answered:
    # otherwise it can reach the hub after the one below and say "booting" last.
    wait_for(lambda: box.uplink.hub_reachable is not None, what="the first heartbeat")
    checks_after(box, clock, 10)
    assert box.health.state == "healthy"
    box.uplink.heartbeat()
    assert hub.nodes()[0]["health"] == "healthy"

    box.health.set("disk_warning", True, "storage 93% full")
    box.uplink.heartbeat()
    assert hub.nodes()[0]["health"] == "degraded"


def test_a_queue_that_falls_behind_degrades_the_box_and_blinks_the_uplink_led(
    hub: HubServer,
    enrolled_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    # Uploads only in an off-peak hour that is not now: studies wait, the hub stays reachable.
    hour = (dt.datetime.fromtimestamp(clock.time()).hour + 12) % 24
    window = Window(start=f"{hour:02d}:00", end=f"{(hour + 1) % 24:02d}:00")
    hub.publish_policy(Policy(version=1, offpeak_windows=(window,), stale_queue_hours=24))
    box = enrolled_box(hub)
    wait_for(lambda: box.policy.current.version == 1, what="the policy")
    files = send_study(box, tmp_path, "late", n=2)
    clock.advance(10)  # past the stable age: complete, coded, queued
    wait_for(lambda: the_study(box, files).state == "queued", what="the study to queue")  # type: ignore[attr-defined]
    checks_after(box, clock, 10)
    assert box.health.state == "healthy"
    assert box.panel is not None and box.panel.snapshot()["leds"]["uplink"]["pattern"] == "steady"

    checks_after(box, clock, 25 * 3600)
    assert box.health.state == "degraded"
    [reason] = box.health.reasons
    assert reason.condition == "queue_stale"
    assert reason.detail == "1 stud(ies) waiting, the oldest for 25.0 h (policy: 24 h)"
    assert box.panel.snapshot()["leds"]["uplink"]["pattern"] == "slow"
    box.uplink.heartbeat()
    assert hub.nodes()[0]["health"] == "degraded"


def test_an_unreachable_hub_degrades_the_box_and_darkens_the_uplink_led(
    hub: HubServer,
    enrolled_box: BoxFactory,
    clock: FakeClock,
) -> None:
    box = enrolled_box(hub)
    checks_after(box, clock, 10)
    assert box.panel is not None and box.panel.snapshot()["leds"]["uplink"]["pattern"] == "steady"
    hub.stop()
    box.uplink.heartbeat()  # what the uplink does every hub.heartbeat_interval
    checks_after(box, clock, 10)
    assert box.health.state == "degraded"
    assert conditions(box) == {"hub_unreachable"}
    assert box.panel.snapshot()["leds"]["uplink"]["pattern"] == "off"


@pytest.fixture
def echo_scp() -> Iterator[tuple[int, AE]]:
    port = free_port()
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    yield port, ae
    ae.shutdown()


# pynetdicom 3.0 leaves a refused socket to the garbage collector (as in tests/dicom).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_that_does_not_answer_c_echo_degrades_the_box(
    make_box: BoxFactory, clock: FakeClock, echo_scp: tuple[int, AE]
) -> None:
    port, ae = echo_scp
    box = make_box(
        pacs={"ae_title": "PACS", "host": LOOPBACK, "port": port},
        health={"pacs_echo_interval": 60},
    )
    checks_after(box, clock, 1)
    wait_for(lambda: "pacs_unreachable" in conditions(box), what="the first C-ECHO")
    [reason] = [r for r in box.health.reasons if r.condition == "pacs_unreachable"]
    assert reason.state == "degraded"
    assert f"PACS PACS@{LOOPBACK}:{port} does not answer" in reason.detail

    ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda e: 0)])
    checks_after(box, clock, 30)
    assert "pacs_unreachable" in conditions(box)  # not checked again before the interval
    checks_after(box, clock, 30)
    assert "pacs_unreachable" not in conditions(box)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_set_while_the_box_runs_is_checked_without_a_restart(
    make_box: BoxFactory, clock: FakeClock, echo_scp: tuple[int, AE]
) -> None:
    port, _ae = echo_scp
    box = make_box(health={"pacs_echo_interval": 60})
    checks_after(box, clock, 1)
    assert "pacs_unreachable" not in conditions(box)  # no PACS, nothing to miss

    # The wizard's DICOM step: a new PACS in the settings, applied to the running box.
    box.apply_dicom(
        box.config.model_copy(
            update={"pacs": PacsSettings(ae_title="NEWPACS", host=LOOPBACK, port=port)}
        )
    )
    checks_after(box, clock, 61)
    wait_for(lambda: "pacs_unreachable" in conditions(box), what="the new PACS's C-ECHO")
    [reason] = [r for r in box.health.reasons if r.condition == "pacs_unreachable"]
    assert f"NEWPACS@{LOOPBACK}:{port}" in reason.detail
