"""Fixtures for the node side of Medix: a hub on 127.0.0.2, a box enrolled with it, Orthanc."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from afra.app import Appliance, build_appliance
from afra.uplink.client import enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer
from tests.conftest import make_config
from tests.fakes import FakeClock

# The hub listens on its own loopback address so that the box can allow exactly that one
# (downloads.allow_addresses) and still refuse 127.0.0.1, as it refuses every loopback,
# private and link-local address it was not told to allow.
HUB_HOST = "127.0.0.2"


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    tick: Callable[[], None] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if tick is not None:
            tick()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer(tmp_path / "hub", host=HUB_HOST)
    server.start()
    yield server
    server.stop()


BoxFactory = Callable[..., Appliance]


@pytest.fixture
def node_box(tmp_path: Path, clock: FakeClock) -> Iterator[BoxFactory]:
    """A box enrolled with `hub`, its downloads allowed to post to the hub's address only."""
    boxes: list[Appliance] = []

    def factory(server: HubServer, **sections: dict[str, Any]) -> Appliance:
        data = tmp_path / "box"
        identity = NodeIdentity(data / "identity")
        if not identity.enrolled:
            enrol(
                identity,
                hub_url=server.url,
                pairing_code=server.new_pairing_code(),
                ca_file=Path(server.ca_pem_path),
                node_name="afra-test",
            )
        hub_settings = {"heartbeat_interval": 3600.0, "command_poll_s": 1, "retry_base": 1.0}
        hub_settings.update(sections.pop("hub", {}))
        downloads = {"allow_addresses": [f"{HUB_HOST}/32"], "webhook_retry_base": 2.0}
        downloads.update(sections.pop("downloads", {}))
        config = make_config(
            data, study={"stable_age": 5}, hub=hub_settings, downloads=downloads, **sections
        )
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


def progress(hub: HubServer, userid: str) -> list[dict[str, Any]]:
    """The progress posts the hub recorded for one user, oldest first."""
    return [
        w
        for w in hub.webhooks()
        if w["outcome"] == "recorded" and w["body"].get("headers", {}).get("userid") == userid
    ]


def statuses(hub: HubServer, userid: str) -> list[int]:
    return [int(w["body"]["Status"]) for w in progress(hub, userid)]


def fetch(hub: HubServer, url: str) -> bytes:
    response = requests.get(url, verify=str(hub.ca_pem_path), timeout=30)
    response.raise_for_status()
    return response.content
