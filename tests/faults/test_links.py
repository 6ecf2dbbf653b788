"""The hub away for a simulated day, and a flaky link (latency, resets, half-open connections,
cuts mid-body): studies wait, the retries stay bounded, and everything arrives once, whole."""

from __future__ import annotations

from pathlib import Path

from medix.hub.server import HubServer
from tests.conftest import BoxFactory, wait_for
from tests.fakes import FakeClock
from tests.netproxy import Proxy
from tests.uplink.conftest import assert_hub_holds, send_study, the_study

DAY = 24 * 3600


def test_a_day_without_the_hub_then_everything_arrives_once(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub, hub={"retry_base": 5.0, "retry_cap": 900.0})
    box.uplink.stop()  # the test drives it: one pass per simulated minute, nothing skipped
    hub.stop()
    sent = []

    def minutes(n: int) -> None:
        for _ in range(n):
            clock.advance(60)
            while box.uplink.run_once():
                pass

    for hour in range(0, 24, 6):  # four studies through the day, the hub away all of it
        files = send_study(box, tmp_path, f"DAY{hour:02d}", n=2)
        sent.append(files)
        wait_for(
            lambda f=files: the_study(box, f).attempts >= 1,  # type: ignore[attr-defined, misc]
            what="a first failed attempt",
            tick=lambda: minutes(1),
        )
        minutes(6 * 60 - 1)
    assert box.monitor is not None
    box.monitor.run_once()
    assert "hub_unreachable" in {r.condition for r in box.health.reasons}
    first = the_study(box, sent[0]).attempts  # type: ignore[attr-defined]
    # Capped backoff: doubling from 5 s to 900 s, each wait 50-100 % of its step (jitter),
    # over a day: about DAY / 675 tries, never one a minute.
    assert DAY / 900 <= first <= DAY / 450 + 10, first

    box.uplink.start()
    hub.start()  # same data, same port, same CA
    wait_for(
        lambda: all(the_study(box, f).state == "delivered" for f in sent),  # type: ignore[attr-defined]
        timeout=60,
        what="every study delivered",
        tick=lambda: clock.advance(60),
    )
    for files in sent:
        assert_hub_holds(hub, box, the_study(box, files), files)
    codes = [s["medis_code"] for s in hub.studies() if s["state"] == "committed"]
    assert len(codes) == len(set(codes)) == 4  # each study once


def test_a_flaky_link_delivers_each_study_once_and_whole(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    host, port = hub.url.removeprefix("https://").split(":")
    with Proxy((host, int(port))) as proxy:
        proxy.latency_s = 0.005
        box = enrolled_box(
            hub,
            via=f"https://127.0.0.1:{proxy.port}",
            hub={"part_size_kb": 64, "request_timeout": 2},
        )
        files = send_study(box, tmp_path, "FLAKY", n=8, size=256)  # ~0.5 MB, several parts

        proxy.stall()  # half-open: connections stay up, nothing moves
        clock.advance(10)
        wait_for(lambda: the_study(box, files).attempts >= 1, what="a stalled attempt to fail")  # type: ignore[attr-defined]
        proxy.resume()
        proxy.reset_all()  # and whatever was open is reset

        proxy.cut_after(150_000)  # the next attempt is cut mid-body
        wait_for(
            lambda: the_study(box, files).attempts >= 2,  # type: ignore[attr-defined]
            what="an attempt cut mid-body",
            tick=lambda: clock.advance(5),
        )
        wait_for(
            lambda: the_study(box, files).state == "delivered",  # type: ignore[attr-defined]
            timeout=90,
            what="delivery over the flaky link",
            tick=lambda: clock.advance(5),
        )
        box.stop()  # before the proxy goes: no poll through a dead link
    study = the_study(box, files)
    assert_hub_holds(hub, box, study, files)
    assert len([s for s in hub.studies() if s["medis_code"] == study.medis_code]) == 1  # type: ignore[attr-defined]
    assert proxy.connections >= 3  # it really went through resets and reconnects
