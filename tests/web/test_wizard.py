"""The wizard's steps: every validation message, applying and persisting what they change."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from afra.app import Appliance
from afra.config import load_config
from afra_web.state import WebState
from medix.hub.server import HubServer
from tests.conftest import BoxFactory
from tests.fakes import FakeClock
from tests.peers import echoscu, free_port
from tests.web.conftest import (
    PASSWORD,
    AppFactory,
    FakeNetwork,
    claim,
    dicom_form,
    error_for,
    finish_setup,
    post,
    set_password,
    text,
)


@pytest.fixture
def claimed(client: FlaskClient, setup_code: str) -> FlaskClient:
    assert claim(client, setup_code).status_code == 302
    return client


@pytest.fixture
def at_dicom(claimed: FlaskClient) -> FlaskClient:
    set_password(claimed)
    post(claimed, "/setup/network", {"action": "keep"})
    return claimed


# -- password -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "confirm", "field", "message"),
    [
        ("Sh0rt!", "Sh0rt!", "password", "Use at least 10 characters (this one has 6)."),
        ("Password-2024", "Password-2024", "password", "contains a common word"),
        ("afra-box-Admin7", "afra-box-Admin7", "password", "contains a common word"),
        ("ab12ab12ab12", "ab12ab12ab12", "password", "Use more different characters."),
        ("lowercaseonly", "lowercaseonly", "password", "Mix at least three of"),
        ("Good-Passw0rd-1", "Good-Passw0rd-2", "confirm", "The two passwords differ."),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(
    claimed: FlaskClient, password: str, confirm: str, field: str, message: str
) -> None:
    response = post(claimed, "/setup/password", {"password": password, "confirm": confirm})
    assert response.status_code == 400
    assert message in error_for(response, field)


def test_a_long_passphrase_needs_no_symbols(claimed: FlaskClient) -> None:
    phrase = "blue river under seven trees"
    response = post(claimed, "/setup/password", {"password": phrase, "confirm": phrase})
    assert response.status_code == 302


def test_the_password_is_kept_only_as_a_slow_hash(claimed: FlaskClient, data_dir: Path) -> None:
    assert set_password(claimed).location.endswith("/setup/network")
    stored = (data_dir / "web" / "admin.hash").read_text()
    assert stored.startswith("scrypt$16384$8$1$")
    assert PASSWORD not in stored
    assert (data_dir / "web" / "admin.hash").stat().st_mode & 0o777 == 0o600


def test_steps_cannot_be_skipped(claimed: FlaskClient) -> None:
    assert claimed.get("/setup/dicom").location.endswith("/setup/password")
    assert claimed.get("/setup/summary").location.endswith("/setup/password")
    assert claimed.get("/setup/nonsense").status_code == 404


def test_progress_survives_a_reboot(
    claimed: FlaskClient, appliance: Appliance, make_app: AppFactory
) -> None:
    set_password(claimed)
    post(claimed, "/setup/network", {"action": "keep"})
    rebooted = make_app(appliance).test_client()
    response = post(rebooted, "/login", {"name": "Sara", "password": PASSWORD})
    assert response.location.endswith("/setup/dicom")


# -- network --------------------------------------------------------------------------------


def test_the_network_step_shows_what_the_box_uses(claimed: FlaskClient) -> None:
    set_password(claimed)
    page = text(claimed.get("/setup/network"))
    for fact in ("192.0.2.10/24", "afra-test", "afra-test.local", "192.0.2.1", "192.0.2.53"):
        assert fact in page
    assert "1000 Mb/s" in page


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"address": "192.0.2.300"}, "address", "Enter an IPv4 address"),
        ({"address": "192.0.2.0"}, "address", "cannot be used for a device"),
        ({"address": "127.0.0.5"}, "address", "cannot be used for a device"),
        ({"prefix": "33"}, "prefix", "Enter the prefix length, 8 to 30"),
        ({"prefix": "x"}, "prefix", "Enter the prefix length, 8 to 30"),
        ({"gateway": "10.0.0.1"}, "gateway", "same network as the address"),
        ({"gateway": "192.0.2.50"}, "gateway", "cannot be the box's own address"),
        ({"gateway": "gw"}, "gateway", "Enter an IPv4 address"),
        ({"dns": ""}, "dns", "Enter at least one DNS server."),
        ({"dns": "dns.example"}, "dns", "Enter DNS servers as IP addresses"),
    ],
)
def test_static_address_mistakes_are_shown_at_the_field(
    claimed: FlaskClient, network: FakeNetwork, form: dict[str, str], field: str, message: str
) -> None:
    set_password(claimed)
    good = {"address": "192.0.2.50", "prefix": "24", "gateway": "192.0.2.1", "dns": "192.0.2.53"}
    response = post(claimed, "/setup/network", {**good, **form, "action": "static"})
    assert response.status_code == 400
    assert message in error_for(response, field)
    assert network.applied == []


def test_a_static_address_is_applied_and_the_new_address_shown(
    claimed: FlaskClient, network: FakeNetwork
) -> None:
    set_password(claimed)
    form = {"address": "192.0.2.50", "prefix": "24", "gateway": "192.0.2.1"}
    response = post(
        claimed, "/setup/network", {**form, "dns": "192.0.2.53 9.9.9.9", "action": "static"}
    )
    assert response.status_code == 200
    assert "http://192.0.2.50:8080/" in text(response)
    [applied] = network.applied
    assert applied is not None
    assert (applied.address, applied.gateway, applied.dns) == (
        "192.0.2.50/24",
        "192.0.2.1",
        ("192.0.2.53", "9.9.9.9"),
    )
    assert claimed.get("/setup/dicom").status_code == 200  # the step counts as done


def test_dhcp_again_and_a_failing_network_manager(
    claimed: FlaskClient, network: FakeNetwork
) -> None:
    set_password(claimed)
    network.fail = "NetworkManager (nmcli) is not installed on this box"
    failed = post(claimed, "/setup/network", {"action": "dhcp"})
    assert failed.status_code == 400
    assert "nmcli" in error_for(failed, "apply")
    network.fail = None
    assert post(claimed, "/setup/network", {"action": "dhcp"}).status_code == 200
    assert network.applied == [None]


# -- DICOM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ae_title", "", "Enter an AE title."),
        ("ae_title", "A" * 17, "at most 16 characters; this one has 17"),
        ("ae_title", "CT\\1", "backslash or control characters"),
        ("ae_title", "CT\t1", "backslash or control characters"),
        ("ae_title", "سی‌تی", "Use plain letters"),
        ("port", "0", "Enter a port number, 1 to 65535."),
        ("port", "70000", "Enter a port number, 1 to 65535."),
        ("port", "abc", "Enter a port number, 1 to 65535."),
        ("port", "8080", "web page's port"),
        ("pacs_host", "", "Enter the PACS's IP address or host name."),
        ("pacs_host", "pacs..local", "neither an IP address nor a host name"),
        ("pacs_host", "no-such-host.invalid", "cannot resolve no-such-host.invalid"),
        ("pacs_port", "104000", "Enter a port number"),
        ("pacs_ae", "P" * 20, "at most 16 characters"),
        ("senders", "CT1", "Line 1: write the AE title, a space"),
        ("senders", "CT1 10.0.0.20\nUS 10.0.0.x", "Line 2: 10.0.0.x is not an IP address"),
        ("senders", "CT\\1 10.0.0.20", "Line 1: An AE title cannot contain a backslash"),
    ],
)
def test_dicom_mistakes_are_shown_at_the_field(
    at_dicom: FlaskClient, field: str, value: str, message: str
) -> None:
    response = post(at_dicom, "/setup/dicom", dicom_form(**{field: value}))
    assert response.status_code == 400
    assert message in error_for(response, field)


def test_the_pacs_admin_gets_what_to_enter(at_dicom: FlaskClient) -> None:
    page = text(at_dicom.get("/setup/dicom"))
    assert "For the PACS administrator" in page
    assert "AFRA" in page and "192.0.2.10" in page and "afra-test.local" in page


def test_the_test_button_echoes_the_pacs(
    at_dicom: FlaskClient, make_box: BoxFactory, tmp_path: Path
) -> None:
    pacs = make_box(tmp_path / "pacs")  # any running SCP answers C-ECHO; this one logs who
    form = dicom_form(pacs_port=str(pacs.dicom.port), pacs_ae="AFRA", action="test")
    response = post(at_dicom, "/setup/dicom", form)
    assert response.status_code == 200
    assert "The PACS answered the C-ECHO with status 0x0000" in text(response)
    seen = pacs.dicom.sightings.get("AFRA_CT")  # the box calls with the AE title typed in
    assert seen is not None and seen.last_echo_at is not None
    closed = post(at_dicom, "/setup/dicom", {**form, "pacs_port": str(free_port())})
    assert "Nothing answers at 127.0.0.1 port" in text(closed)
    assert at_dicom.get("/setup/summary").location.endswith("/setup/dicom")  # nothing saved


def test_saving_restarts_the_dicom_service_and_persists(
    make_box: BoxFactory, make_app: AppFactory, tmp_path: Path, setup_code: str
) -> None:
    box = make_box(tmp_path / "live")
    client = make_app(box).test_client()
    from afra.system.provision import new_setup_code

    code = new_setup_code(tmp_path / "live")
    claim(client, code)
    set_password(client)
    post(client, "/setup/network", {"action": "keep"})
    old_port, new_port = box.dicom.port, free_port()
    form = dicom_form(
        port=str(new_port), pacs_port="4242", senders="CT1 10.0.0.20\nUS2 10.0.2.0/24"
    )
    response = post(client, "/setup/dicom", form)
    assert response.status_code == 302 and response.location.endswith("/setup/hub")
    assert "now answers as AFRA_CT on port" in text(client.get("/setup/hub"))
    # Live: the new AE title and port answer; the old port is closed.
    assert box.dicom.port == new_port and box.config.dicom.ae_title == "AFRA_CT"
    assert echoscu("127.0.0.1", new_port, aec="AFRA_CT", aet="ORTHANC").returncode == 0
    assert echoscu("127.0.0.1", old_port, check=False).returncode != 0
    # Saved: the overlay holds it, and the next start reads it.
    overlay = tomllib.loads((tmp_path / "live" / "settings.toml").read_text())
    assert overlay["dicom"]["ae_title"] == "AFRA_CT"
    assert overlay["dicom"]["peers"][0] == {"ae_title": "ORTHANC", "host": "127.0.0.1"}
    assert overlay["pacs"] == {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    reloaded = load_config(None, environ={}, cli_overrides=[f'box.data_dir="{tmp_path / "live"}"'])
    assert reloaded.dicom.port == new_port
    assert [p.ae_title for p in reloaded.dicom.peers] == ["ORTHANC", "CT1", "US2"]
    assert reloaded.pacs is not None and reloaded.pacs.port == 4242


def test_a_port_in_use_keeps_the_box_serving(
    make_box: BoxFactory, make_app: AppFactory, tmp_path: Path
) -> None:
    other = make_box(tmp_path / "other")
    box = make_box(tmp_path / "live")
    from afra.system.provision import new_setup_code

    client = make_app(box).test_client()
    claim(client, new_setup_code(tmp_path / "live"))
    set_password(client)
    post(client, "/setup/network", {"action": "keep"})
    port = box.dicom.port
    response = post(client, "/setup/dicom", dicom_form(port=str(other.dicom.port)))
    assert response.status_code == 400
    assert "The box cannot listen there" in error_for(response, "port")
    assert box.dicom.port == port
    assert echoscu("127.0.0.1", port).returncode == 0
    assert not (tmp_path / "live" / "settings.toml").exists()


def test_the_box_shows_the_pacs_echo_and_first_store(
    make_box: BoxFactory, make_app: AppFactory, tmp_path: Path
) -> None:
    box = make_box(tmp_path / "live")
    from afra.system.provision import new_setup_code

    client = make_app(box).test_client()
    claim(client, new_setup_code(tmp_path / "live"))
    set_password(client)
    post(client, "/setup/network", {"action": "keep"})
    assert "Nothing received yet." in text(client.get("/setup/dicom"))
    echoscu("127.0.0.1", box.dicom.port, aet="ORTHANC")
    status = client.get("/api/status").get_json()
    assert status["sightings"][0]["ae_title"] == "ORTHANC"
    assert status["sightings"][0]["last_echo_at"] is not None
    assert "ORTHANC" in text(client.get("/setup/dicom"))


# -- hub ------------------------------------------------------------------------------------


@pytest.fixture
def at_hub(at_dicom: FlaskClient) -> FlaskClient:
    assert post(at_dicom, "/setup/dicom", dicom_form()).status_code == 302
    return at_dicom


def hub_form(hub: HubServer, **overrides: str) -> dict[str, str]:
    form = {
        "url": hub.url,
        "code": hub.new_pairing_code(),
        "ca_text": Path(hub.ca_pem_path).read_text(),
        "action": "enrol",
    }
    form.update(overrides)
    return form


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "http://hub.example", "starting with https://"),
        ("url", "", "starting with https://"),
        ("code", "12", "Enter the pairing code"),
        ("ca_text", "", "Choose the hub's CA certificate file"),
        ("ca_text", "hello", "This file is not a PEM certificate"),
    ],
)
def test_hub_mistakes_are_shown_at_the_field(
    at_hub: FlaskClient, hub: HubServer, field: str, value: str, message: str
) -> None:
    response = post(at_hub, "/setup/hub", hub_form(hub, **{field: value}))
    assert response.status_code == 400
    assert message in error_for(response, "ca" if field == "ca_text" else field)


def test_a_leaf_certificate_is_not_a_ca(at_hub: FlaskClient, hub: HubServer) -> None:
    leaf = Path(hub.hub.ca.server_cert_path).read_text()
    response = post(at_hub, "/setup/hub", hub_form(hub, ca_text=leaf))
    assert "not a CA certificate" in error_for(response, "ca")


def test_enrolment_failures_point_at_the_cause(
    at_hub: FlaskClient, hub: HubServer, tmp_path: Path
) -> None:
    wrong = post(at_hub, "/setup/hub", hub_form(hub, code="AAAA-BBBB-CCCC"))
    assert "The hub refused the pairing code" in error_for(wrong, "code")
    other = HubServer(tmp_path / "other-hub")  # another CA, never started
    untrusted = post(
        at_hub, "/setup/hub", hub_form(hub, ca_text=Path(other.ca_pem_path).read_text())
    )
    assert "not signed by this CA" in error_for(untrusted, "ca")
    other.stop()
    gone = post(at_hub, "/setup/hub", hub_form(hub, url=f"https://127.0.0.1:{free_port()}"))
    assert "The box cannot reach the hub" in error_for(gone, "url")


def test_enrolment_runs_and_uploads_switch_to_the_hub(
    at_hub: FlaskClient, hub: HubServer, appliance: Appliance, data_dir: Path
) -> None:
    response = at_hub.post(
        "/setup/hub",
        data={
            **{k: v for k, v in hub_form(hub).items() if k != "ca_text"},
            "ca": (io.BytesIO(Path(hub.ca_pem_path).read_bytes()), "hub-ca.pem"),
            "csrf_token": _token(at_hub),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    page = text(response)
    assert "Enrolled. The hub knows this box as node node-" in page
    assert appliance.identity.enrolled
    assert appliance.uplink.client is appliance.hub is not None
    assert appliance.commands is not None and "apply_policy" in appliance.commands.handlers
    assert [n["name"] for n in hub.nodes()] == ["afra"]
    overlay = tomllib.loads((data_dir / "settings.toml").read_text())
    assert overlay["hub"]["url"] == hub.url
    assert at_hub.get("/setup/summary").status_code == 200


def _token(client: FlaskClient) -> str:
    from tests.web.conftest import token

    return token(client)


def test_the_hub_can_be_skipped_and_the_summary_says_so(at_hub: FlaskClient) -> None:
    response = post(at_hub, "/setup/hub", {"action": "skip"})
    assert response.location.endswith("/setup/summary")
    page = text(at_hub.get("/setup/summary"))
    assert "not enrolled" in page
    assert "AFRA_CT" in page and "ORTHANC @ 127.0.0.1:4242" in page


# -- summary and closing --------------------------------------------------------------------


def test_finishing_closes_the_wizard_until_reopened(
    client: FlaskClient, setup_code: str, app: Flask, data_dir: Path, clock: FakeClock
) -> None:
    finish_setup(client, setup_code)
    closed = client.get("/setup/dicom")
    assert closed.location.endswith("/dashboard")
    assert "Setup is closed" in text(client.get("/dashboard"))
    wrong = post(client, "/settings/reopen", {"reopen_password": "nope"})
    assert wrong.status_code == 400
    assert error_for(wrong, "reopen_password") == "This password is wrong."
    right = post(client, "/settings/reopen", {"reopen_password": PASSWORD})
    assert right.location.endswith("/setup/summary")
    assert client.get("/setup/dicom").status_code == 200
    assert WebState(data_dir, clock).progress().wizard_open
    post(client, "/setup/summary")
    assert client.get("/setup/dicom").location.endswith("/dashboard")


def test_saved_pacs_reaches_every_part_that_asks_it(
    at_dicom: FlaskClient, appliance: Appliance
) -> None:
    assert post(at_dicom, "/setup/dicom", dicom_form(pacs_port="4343")).status_code == 302
    for pacs in (appliance.pacs, appliance.completion.pacs, appliance.downloads.pacs):  # type: ignore[union-attr]
        assert pacs is not None and (pacs.pacs.host, pacs.pacs.port) == ("127.0.0.1", 4343)
