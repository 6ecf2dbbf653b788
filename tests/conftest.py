"""Fixtures, one per seam: configuration, clock, storage root, a running box, real peers."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afra.app import Appliance, build_appliance
from afra.config import Config
from medix.hub.server import HubServer
from tests.fakes import FakeClock
from tests.figures import ATTACKS, lines
from tests.peers import Orthanc, free_port

LOOPBACK = "127.0.0.1"

# No test advertises over mDNS on this machine's own network: the `afra run` processes tests
# start inherit this; tests/mdns advertises only inside network namespaces it makes.
os.environ["AFRA__MDNS__ENABLED"] = "false"
# `afra run` processes tests start serve their setup page on loopback, on a free port.
os.environ["AFRA__WEB__BIND"] = LOOPBACK
os.environ["AFRA__WEB__PORT"] = "0"


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    tick: Callable[[], None] | None = None,
) -> Any:
    """Poll `predicate` until it returns something true (returned), calling `tick` between
    polls (e.g. to advance a fake clock); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if tick is not None:
            tick()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    """A valid Config on loopback; sections override key by key."""
    base: dict[str, Any] = {
        "box": {"data_dir": str(data_dir), "log_level": "DEBUG"},
        "dicom": {"bind": LOOPBACK, "port": 0, "allow_any_peer": True, "network_timeout": 30},
        "storage": {"min_free_mb": 0},
        "study": {"stable_age": 60, "pacs_count_wait": 300},
        # No multicast outside the namespaces tests/mdns makes; mock GPIO pins everywhere.
        "mdns": {"enabled": False},
        "panel": {"pin_factory": "mock"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Config.model_validate(base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BoxFactory = Callable[..., Appliance]


@pytest.fixture
def make_box(tmp_path: Path, clock: FakeClock) -> Iterator[BoxFactory]:
    """Build and start real appliances on loopback (free port unless given); stop them after."""
    started: list[Appliance] = []

    def factory(
        data_dir: Path | None = None,
        *,
        usage: Any = None,
        one_flush: Any = None,
        **sections: dict[str, Any],
    ) -> Appliance:
        config = make_config(data_dir or tmp_path / "box", **sections)
        seams = {"usage": usage, "one_flush": one_flush}
        box = build_appliance(
            config, clock=clock, **{k: v for k, v in seams.items() if v is not None}
        )
        box.start()
        started.append(box)
        return box

    yield factory
    for box in started:
        box.close()


@pytest.fixture
def box(make_box: BoxFactory) -> Appliance:
    return make_box()


@pytest.fixture(scope="module")
def box_port() -> int:
    """A fixed port for a module whose Orthanc must know where the box listens."""
    return free_port()


@pytest.fixture(scope="module")
def orthanc(box_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc as the center's PACS, knowing the box as modality AFRA."""
    with Orthanc(
        aet="ORTHANC",
        modalities={"AFRA": ("AFRA", LOOPBACK, box_port)},
        tmp_root=tmp_path_factory.mktemp("orthanc"),
    ) as pacs:
        yield pacs


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    """A reference hub on loopback, its state under the test's own directory."""
    server = HubServer(tmp_path / "hub")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """RAUC bundles (tests.bundles) and the configuration `rauc info` reads on a box."""
    from tests.bundles import make_bundles

    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(autouse=True)
def _quiet_pynetdicom() -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _own_tempdir() -> Iterator[None]:
    """A box points tempfile's folder at its spool (scu.configure_pynetdicom, process-wide):
    each test gets the folder back as it was, so none writes into a box gone (or a disk
    unmounted) with the test before it."""
    before = tempfile.tempdir
    yield
    tempfile.tempdir = before


# -- the fault suite's figures (tests/figures.py) ---------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each attack once: at its call, or at its setup when that failed (it never ran)."""
    if "attack" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        ATTACKS["tried"] += 1
        ATTACKS["passed"] += int(report.failed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = lines()
    if figures:
        terminalreporter.section("fault suite figures")
        for line in figures:
            terminalreporter.write_line(line)
