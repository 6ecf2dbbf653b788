"""mDNS: the box found by name on a LAN, two boxes with one name told apart, goodbyes on stop.

Everything that multicasts runs inside two network namespaces the test makes (tests/mdns/
netns.py): box A and box B, joined by one virtual cable.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

from afra.app import Appliance, build_appliance
from afra.config import Config
from afra.errors import ConfigError
from afra.mdns import DICOM_TYPE, HTTP_TYPE, Advert, MdnsAdvertiser, instance_name, short_id
from tests.conftest import make_config, wait_for
from tests.fakes import FakeClock
from tests.mdns.netns import ADDRESS_A, ADDRESS_B, Lan, lan, run_in

NEW_ADDRESS_B = "198.18.0.12"
HTTP_TXT = {"txtvers", "product", "id", "version", "path"}
DICOM_TXT = {"txtvers", "product", "id", "aet"}


# -- names and records, no network --------------------------------------------------------------


def _key(path: Path) -> Path:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    return path


def test_the_short_id_is_stable_per_box_and_differs_between_boxes(tmp_path: Path) -> None:
    one, two = _key(tmp_path / "one.key"), _key(tmp_path / "two.key")
    assert short_id(one) == short_id(one)
    assert short_id(one) != short_id(two)
    assert len(short_id(one)) == 6 and int(short_id(one), 16) >= 0


def test_the_friendly_name_fits_dns_and_keeps_the_id() -> None:
    assert instance_name("{name}-{id}", name="afra", box_id="3f9a2c", ae_title="AFRA") == (
        "afra-3f9a2c"
    )
    long = instance_name("{name}-{id}", name="Radiologie " * 10, box_id="3f9a2c", ae_title="X")
    assert len(long.encode()) <= 63 and long.endswith("-3f9a2c")
    with pytest.raises(ConfigError, match="serial"):
        from afra.config import load_config

        load_config(environ={}, cli_overrides=['mdns.name="{name}-{serial}"'])


def test_txt_records_carry_no_patient_data_and_no_secrets() -> None:
    advert = Advert("afra-3f9a2c", "3f9a2c", 8080, 11112, "AFRA", "0.1.0")
    http, dicom = advert.infos(["198.18.0.1"])
    assert set(http.decoded_properties) == HTTP_TXT
    assert set(dicom.decoded_properties) == DICOM_TXT
    assert dicom.decoded_properties["aet"] == "AFRA"
    without_web = Advert("afra-3f9a2c", "3f9a2c", None, 11112, "AFRA", "0.1.0")
    assert [i.type for i in without_web.infos(["198.18.0.1"])] == [DICOM_TYPE]


# -- on a LAN of two namespaces -----------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[Lan]:
    with lan() as made:
        yield made


def box_config(data: Path) -> Config:
    return make_config(
        data,
        box={"name": "Radiology"},
        mdns={"enabled": True, "name": "{name}", "address_check_interval": 3600},
        web={"enabled": True, "port": 8080},
    )


def start_in(netns: str, config: Config, clock: FakeClock) -> Appliance:
    box = build_appliance(config, clock=clock)
    run_in(netns, box.start)  # its threads, and so its sockets, live in the namespace
    assert box.mdns is not None and box.mdns.registered.wait(30)
    return box


def afra_in(netns: str, *args: str) -> str:
    """`afra ARGS` run as its own process inside `netns`; its standard output."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "afra.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def afra_discover(netns: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(afra_in(netns, "discover", "--json", "--timeout", "2"))
    return found


def test_two_boxes_with_one_name_are_both_found_under_distinct_names(
    net: Lan, tmp_path: Path, clock: FakeClock
) -> None:
    a = start_in(net.a, box_config(tmp_path / "a"), clock)
    b = None
    try:
        b = start_in(net.b, box_config(tmp_path / "b"), clock)
        assert a.mdns is not None and b.mdns is not None
        assert set(a.mdns.names.values()) == {"Radiology"}
        assert set(b.mdns.names.values()) == {"Radiology-2"}  # the name was taken: renamed

        found = afra_discover(net.a)
        boxes = {f["name"]: f for f in found if f["type"] == HTTP_TYPE}
        dicom = {f["name"]: f for f in found if f["type"] == DICOM_TYPE}
        assert set(boxes) == set(dicom) == {"Radiology", "Radiology-2"}
        assert boxes["Radiology"]["addresses"] == [ADDRESS_A]
        assert boxes["Radiology-2"]["addresses"] == [ADDRESS_B]
        assert boxes["Radiology"]["host"] != boxes["Radiology-2"]["host"]
        assert boxes["Radiology"]["port"] == 8080 and boxes["Radiology"]["afra"] is True
        assert dicom["Radiology-2"]["port"] == b.dicom.port
        assert dicom["Radiology-2"]["txt"]["aet"] == "AFRA"
        assert all(set(f["txt"]) == HTTP_TXT for f in boxes.values())
        assert all(set(f["txt"]) == DICOM_TXT for f in dicom.values())

        human = afra_in(net.b, "discover", "--timeout", "2")
        assert "AFRA boxes (2):" in human and "DICOM services (2):" in human
        assert "http://198.18.0.1:8080/" in human and "AE AFRA" in human
    finally:
        for box in (a, b):
            if box is not None:
                box.close()


class Watcher(ServiceListener):
    """A long-running browser on box A's side of the cable, as a PACS admin's tool would be."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.events.put(("add", name))

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.events.put(("update", name))

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.events.put(("remove", name))

    def until(self, kind: str, name: str) -> None:
        while True:
            got = self.events.get(timeout=15)
            if got == (kind, name):
                return


@contextlib.contextmanager
def watching(
    net: Lan, box: MdnsAdvertiser, service_type: str
) -> Iterator[tuple[Zeroconf, Watcher]]:
    """Box B advertising, box A browsing `service_type`; the box's first advert seen."""
    watcher = Watcher()
    zc = run_in(net.a, lambda: Zeroconf(interfaces=[ADDRESS_A]))
    browser = ServiceBrowser(zc, service_type, watcher)
    try:
        run_in(net.b, box.start)
        watcher.until("add", f"Radiology.{service_type}")
        yield zc, watcher
    finally:
        box.stop()
        browser.cancel()
        zc.close()


def test_a_new_address_is_announced_and_stop_says_goodbye(net: Lan, clock: FakeClock) -> None:
    advert = Advert("Radiology", "bbbbbb", 8080, 11112, "AFRA", "0.1.0")
    box = MdnsAdvertiser(lambda: advert, clock=clock, check_interval=3600)
    name = f"Radiology.{HTTP_TYPE}"
    with watching(net, box, HTTP_TYPE) as (zc, watcher):
        info = zc.get_service_info(HTTP_TYPE, name, timeout=3000)
        assert info is not None and info.parsed_addresses() == [ADDRESS_B]

        net.move_b(NEW_ADDRESS_B)
        assert run_in(net.b, box.check_addresses)  # what the box does every interval
        watcher.until("update", name)

        # The old address's goodbye ends it within a second (RFC 6762 10.1), not its TTL.
        def moved() -> bool:
            info = zc.get_service_info(HTTP_TYPE, name, timeout=3000)
            assert info is not None
            return info.parsed_addresses() == [NEW_ADDRESS_B]

        wait_for(moved, timeout=10, what="only the new address advertised")
        assert box.snapshot()["addresses"] == [NEW_ADDRESS_B]

        box.stop()
        watcher.until("remove", name)  # goodbye packets: gone at once, not after the TTL


def test_settings_changed_while_running_are_advertised_anew(net: Lan, clock: FakeClock) -> None:
    adverts = [Advert("Radiology", "cccccc", 8080, 11112, "AFRA", "0.1.0")]
    box = MdnsAdvertiser(lambda: adverts[-1], clock=clock, check_interval=3600)
    name = f"Radiology.{DICOM_TYPE}"
    with watching(net, box, DICOM_TYPE) as (zc, _watcher):
        # The wizard's DICOM step: a new port and AE title (Appliance.apply_dicom refreshes).
        adverts.append(Advert("Radiology", "cccccc", 8080, 104, "NEWAE", "0.1.0"))
        box.refresh()

        def advertised() -> bool:
            info = zc.get_service_info(DICOM_TYPE, name, timeout=3000)
            seen = (info.port, info.decoded_properties.get("aet")) if info else None
            return seen == (104, "NEWAE")

        wait_for(advertised, timeout=15, what="port 104 and AE NEWAE advertised")
