"""End to end in a real browser: Debian's headless Chromium at a phone's size, driven by
Playwright, against a running box (DICOM service, uplink and web page started) and the
reference hub. The whole wizard from the claim to the enrolment, then the dashboard showing a
study DCMTK's storescu sent; once in English and once in Persian. A screenshot of each step is
saved under the test's temporary directory (the path is printed).

Playwright only drives /usr/bin/chromium: nothing here (or anywhere) runs `playwright install`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from afra.app import Appliance, build_appliance
from afra.system.provision import new_setup_code
from afra.wsgi import WsgiServer
from afra_web.server import start_web
from medix.hub.server import HubServer
from tests.conftest import BoxFactory, make_config, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import echoscu, free_port, storescu
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, PASSWORD, FakeNetwork

PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def running_box(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Appliance, WsgiServer]]:
    """A box as `afra run` starts it: appliance and web page (its own free ports)."""
    config = make_config(
        tmp_path / "box",
        web={"bind": "127.0.0.1", "port": 0},
        hub={"heartbeat_interval": 3600.0, "command_poll_s": 1, "retry_base": 1.0},
    )
    box = build_appliance(config, clock=clock)
    box.start()
    web = start_web(box, network=FakeNetwork())
    yield box, web
    web.stop()
    box.close()


class Shots:
    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.n = 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


def submit(page: Page, selector: str) -> None:
    with page.expect_navigation():
        page.click(selector)


@pytest.mark.parametrize("lang", ["en", "fa"])
def test_the_wizard_from_claim_to_enrolled_then_the_dashboard(
    lang: str,
    browser: Browser,
    running_box: tuple[Appliance, WsgiServer],
    hub: HubServer,
    make_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    box, web = running_box
    pacs = make_box(tmp_path / "pacs")  # another box answers C-ECHO as the PACS would
    code = new_setup_code(tmp_path / "box")
    base = f"http://127.0.0.1:{web.port}"
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    shots = Shots(page, tmp_path / f"screenshots-{lang}")
    print(f"\nscreenshots ({lang}): {shots.folder}")

    # 1. Claim: nothing but the claim page is reachable.
    page.goto(f"{base}/dashboard")
    assert page.url.endswith("/claim")
    if lang == "fa":
        submit(page, "button[name=lang][value=fa]")
        expect(page.locator("html")).to_have_attribute("dir", "rtl")
        expect(page.locator("h1")).to_have_text("راه‌اندازی این دستگاه")
    shots.take("claim")
    page.fill("input[name=name]", "Sara")
    page.fill("input[name=code]", "2222-3333-4444")
    submit(page, "button[name=action][value=code]")
    expect(page.locator("#e-code")).to_be_visible()
    shots.take("claim-mistyped")
    page.fill("input[name=name]", "Sara")
    page.fill("input[name=code]", code.lower())
    submit(page, "button[name=action][value=code]")

    # 2. Password.
    assert page.url.endswith("/setup/password")
    page.fill("input[name=password]", "short")
    page.fill("input[name=confirm]", "short")
    submit(page, "form.card button[type=submit]")
    expect(page.locator("#e-password")).to_be_visible()
    shots.take("password-weak")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    submit(page, "form.card button[type=submit]")

    # 3. Network: what the box uses, kept.
    assert page.url.endswith("/setup/network")
    expect(page.locator("[data-ip]")).to_have_text("192.0.2.10/24")
    shots.take("network")
    submit(page, "button[name=action][value=keep]")

    # 4. DICOM: the Test button echoes the PACS; the PACS's own echo shows up.
    assert page.url.endswith("/setup/dicom")
    dicom_port = free_port()
    page.fill("input[name=ae_title]", "AFRA_E2E")
    page.fill("input[name=port]", str(dicom_port))
    page.fill("input[name=pacs_host]", "127.0.0.1")
    page.fill("input[name=pacs_port]", str(pacs.dicom.port))
    page.fill("input[name=pacs_ae]", "AFRA")
    submit(page, "button[name=action][value=test]")
    expect(page.locator("#echo-result")).to_contain_text("0x0000")
    echoscu("127.0.0.1", box.dicom.port, aet="AFRA")  # the PACS admin presses "Verify"
    expect(page.locator("[data-sightings] li").first).to_contain_text("AFRA", timeout=12_000)
    shots.take("dicom-tested")
    submit(page, "button[name=action][value=save]")
    assert box.dicom.port == dicom_port and box.config.dicom.ae_title == "AFRA_E2E"

    # 5. Hub: pairing code and CA from the hub's portal; enrolment runs.
    assert page.url.endswith("/setup/hub")
    page.fill("input[name=url]", hub.url)
    page.fill("input[name=code]", hub.new_pairing_code())
    page.set_input_files("input[name=ca]", str(hub.ca_pem_path))
    shots.take("hub")
    submit(page, "button[name=action][value=enrol]")
    expect(page.locator("#enrol-result")).to_contain_text("node-")
    shots.take("hub-enrolled")
    assert box.identity.enrolled and [n["name"] for n in hub.nodes()] == ["afra"]
    submit(page, "a.button")

    # 6. Summary, then the dashboard.
    assert page.url.endswith("/setup/summary")
    expect(page.locator("dl.facts")).to_contain_text("AFRA_E2E")
    shots.take("summary")
    submit(page, "main form button[type=submit]")
    assert page.url.endswith("/dashboard")
    shots.take("dashboard-empty")

    # A study from a modality: stored, complete, coded, then delivered to the hub.
    files = make_ct_series(
        tmp_path / "study", n=4, rows=32, cols=32, patient_id="E2E1", patient_name="Rostami^Leila"
    )
    storescu("127.0.0.1", box.dicom.port, files, aec="AFRA_E2E")
    clock.advance(61)
    wait_for(
        lambda: any(s.state == "delivered" for s in box.index.studies()),
        timeout=30,
        what="the study delivered to the hub",
    )
    page.reload()
    row = page.locator("#studies tr[data-study]").first
    expect(row).to_contain_text("Leila Rostami")
    expect(row).to_contain_text("••••-••••-••••")
    shots.take("dashboard-study")
    submit(page, "#studies button")
    [study] = box.index.studies()
    assert study.medis_code is not None
    expect(page.locator("#revealed-code")).to_have_text(
        f"{study.medis_code[:4]}-{study.medis_code[4:8]}-{study.medis_code[8:]}"
    )
    shots.take("code-revealed")
    page.goto(f"{base}/audit")
    expect(page.locator("#audit")).to_contain_text("Sara")
    shots.take("audit")
    context.close()
