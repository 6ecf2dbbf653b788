"""Fixtures for the node side of Medix: a hub on 127.0.0.2, a box enrolled with it, Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from afra.app import Appliance
from medix.hub.server import HubServer
from tests.conftest import BoxFactory
from tests.uplink.conftest import enrolled_box  # noqa: F401 - a fixture, used by node_box

# The hub listens on its own loopback address so that the box can allow exactly that one
# (downloads.allow_addresses) and still refuse 127.0.0.1, as it refuses every loopback,
# private and link-local address it was not told to allow.
HUB_HOST = "127.0.0.2"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer(tmp_path / "hub", host=HUB_HOST)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def node_box(enrolled_box: BoxFactory) -> BoxFactory:  # noqa: F811 - the fixture imported above
    """A box enrolled with `hub`, its downloads allowed to post to the hub's address only."""

    def factory(server: HubServer, **sections: dict[str, Any]) -> Appliance:
        downloads = {"allow_addresses": [f"{HUB_HOST}/32"], "webhook_retry_base": 2.0}
        downloads.update(sections.pop("downloads", {}))
        return enrolled_box(server, downloads=downloads, **sections)

    return factory


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
