"""Every page at a phone's size, in English and Persian: what tests/web/test_phone_layout.py
checks, and what `make screenshots` saves for a person to look at.

`Site` builds what the pages need, as the tests do: a started box on loopback (DICOM, uplink,
the web page served by afra.wsgi.WsgiServer with the tests' fake network), set up and enrolled
with the reference hub, a study from DCMTK's storescu delivered with its Medis code, a physician
account at the hub; an unclaimed box (the claim page) and a box running an image (the system
update section). The wizard is set up through Flask's test client on the served app itself; a
browser context gets the same signed session cookie, in the language it asks for.

    python -m tests.web.screenshots [--out build/screenshots]

Playwright drives Debian's /usr/bin/chromium; nothing runs `playwright install`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, BrowserContext, sync_playwright
from playwright.sync_api import Page as Tab

from afra.app import Appliance, build_appliance
from afra.medis.slip import patient_link
from afra.system.provision import new_setup_code
from afra.system.release import Release
from afra.wsgi import WsgiServer
from afra_web import create_app
from medix import l10n
from medix.hub.server import HubServer
from tests.conftest import make_config, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock, FakeRauc
from tests.peers import echoscu, free_port, storescu
from tests.web.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    FakeNetwork,
    claim,
    dicom_form,
    post,
    set_password,
)

# Two common phones: a small Android (360 x 740 CSS px) and an iPhone 12-15 (390 x 844).
VIEWPORTS = {360: {"width": 360, "height": 740}, 390: {"width": 390, "height": 844}}
LANGUAGES = ("en", "fa")
LOCALES = {"en": "en-US", "fa": "fa-IR"}
BOX_AE = "AFRA_CT"
PHYSICIAN = ("referrer", "Referrer^Synthetic", "a long physician password")
BIRTH_DATE = dt.date(1970, 1, 1)  # tests.dicomgen's PatientBirthDate


def launch(playwright: Any) -> Browser:
    browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    return browser


@dataclass
class Served:
    """One box's web app, served on loopback, and a test client signed in to it."""

    box: Appliance
    app: Flask
    server: WsgiServer
    client: FlaskClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def cookie(self, lang: str, *, signed_in: bool) -> dict[str, Any]:
        """The session cookie a browser would hold: the client's (when signed in) in `lang`."""
        data: dict[str, Any] = {}
        if signed_in:
            with self.client.session_transaction() as session:
                data = dict(session)
        data["lang"] = lang
        serializer = self.app.session_interface.get_signing_serializer(self.app)  # type: ignore[attr-defined]
        value = serializer.dumps(data)
        return {"name": "afra_session", "value": value, "url": self.base, "httpOnly": True}


def walk_to_the_hub_step(served: Served, pacs_port: int) -> None:
    """Claim, password, network and DICOM, through the served app's test client."""
    client, box = served.client, served.box
    assert claim(client, new_setup_code(box.spool.root), "Sara Rahimi").status_code == 302
    assert set_password(client).status_code == 302
    assert post(client, "/setup/network", {"action": "keep"}).status_code == 302
    form = dicom_form(
        ae_title=BOX_AE,
        port=str(free_port()),
        pacs_port=str(pacs_port),
        pacs_ae="AFRA",
        senders="CT_ROOM2 192.0.2.20\nUS_ROOM3 192.0.2.0/24",
    )
    assert post(client, "/setup/dicom", form).status_code == 302


def serve(box: Appliance, stack: contextlib.ExitStack) -> Served:
    app = create_app(box, network=FakeNetwork())
    app.testing = True
    server = WsgiServer(app, bind="127.0.0.1", port=0, name="afra-web", what="the web page")
    server.start()
    stack.callback(server.stop)
    return Served(box, app, server, app.test_client())


class Site:
    """The boxes and the hub every page is shown from (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.stack = contextlib.ExitStack()
        self.browser: Browser | None = None

    # -- building ---------------------------------------------------------------------------

    def start(self) -> Site:
        stack, root = self.stack, self.root
        self.hub = HubServer(root / "hub").start()
        stack.callback(self.hub.stop)
        self.hub.add_physician(*PHYSICIAN)
        self.pacs = self._box(root / "pacs", start=True)  # answers C-ECHO as a PACS would
        self.main = serve(
            self._box(
                root / "box",
                start=True,
                web={"bind": "127.0.0.1", "port": 0},
                hub={"heartbeat_interval": 3600.0, "command_poll_s": 1, "retry_base": 1.0},
            ),
            stack,
        )
        self.fresh = serve(self._box(root / "fresh", web={"bind": "127.0.0.1", "port": 0}), stack)
        new_setup_code(root / "fresh")
        rauc = FakeRauc(booted="A")
        release = Release(version="1.0.0", image=True, compatible="afra-rpi4-arm64", slot="A")
        self.image = serve(
            self._box(root / "image", web={"port": 8080}, rauc=rauc, release=release), stack
        )
        self._set_up(self.main, enrol=True)
        self._set_up(self.image, enrol=False)
        self._send_study()
        for served in (self.main, self.image):  # the wizard open again: every step can be seen
            post(served.client, "/settings/reopen", {"reopen_password": PASSWORD})
            served.client.get("/setup/summary")  # takes the notices waiting in the session
        return self

    def _box(self, data_dir: Path, *, start: bool = False, **kw: Any) -> Appliance:
        extra = {k: kw.pop(k) for k in ("rauc", "release") if k in kw}
        box = build_appliance(make_config(data_dir, **kw), clock=self.clock, **extra)
        self.stack.callback(box.close)
        if start:
            box.start()
        return box

    def _set_up(self, served: Served, *, enrol: bool) -> None:
        client = served.client
        walk_to_the_hub_step(served, self.pacs.dicom.port)
        if enrol:
            answer = post(
                client,
                "/setup/hub",
                {
                    "url": self.hub.url,
                    "code": self.hub.new_pairing_code(),
                    "ca_text": Path(self.hub.ca_pem_path).read_text(),
                    "action": "enrol",
                },
            )
            assert answer.status_code == 200, answer.get_data(as_text=True)
        assert post(client, "/setup/hub", {"action": "skip"}).status_code == 302
        assert post(client, "/setup/summary").status_code == 302
        client.get("/dashboard")  # takes the notices waiting in the session

    def _send_study(self) -> None:
        box = self.main.box
        echoscu("127.0.0.1", box.dicom.port, aet="AFRA", aec=BOX_AE)
        files = make_ct_series(
            self.root / "study",
            n=3,
            rows=32,
            cols=32,
            patient_id="E2E1",
            patient_name="Rostami^Leila",
        )
        storescu("127.0.0.1", box.dicom.port, files, aet="CT_ROOM2", aec=BOX_AE)
        self.clock.advance(61)
        wait_for(
            lambda: any(s.state == "delivered" for s in box.index.studies()),
            timeout=60,
            what="the study delivered to the hub",
        )
        [study] = box.index.studies()
        assert study.medis_code is not None
        self.code = study.medis_code

    def close(self) -> None:
        self.stack.close()

    # -- browsing -----------------------------------------------------------------------------

    def context(self, where: str, width: int, lang: str, *, signed_in: bool) -> BrowserContext:
        """A phone's browser for one box (or the hub), in `lang`. One per page shown: the
        box serves few connections per address, and a context keeps its own alive."""
        if where == "hub":
            return self.phone(width, lang)
        return self.phone(width, lang, self.served(where).cookie(lang, signed_in=signed_in))

    def phone(self, width: int, lang: str, cookie: dict[str, Any] | None = None) -> BrowserContext:
        assert self.browser is not None
        context = self.browser.new_context(
            viewport=VIEWPORTS[width],  # type: ignore[arg-type]
            is_mobile=True,
            has_touch=True,
            locale=LOCALES[lang],
            ignore_https_errors=True,  # the hub's own CA
        )
        context.set_default_timeout(15_000)
        if cookie is not None:
            context.add_cookies([cookie])  # type: ignore[list-item]
        return context

    def served(self, where: str) -> Served:
        return {"main": self.main, "fresh": self.fresh, "image": self.image}[where]

    def base(self, where: str) -> str:
        return self.hub.url if where == "hub" else self.served(where).base


def _submit(tab: Tab, selector: str) -> None:
    with tab.expect_navigation():
        tab.click(selector)


def reveal_code(tab: Tab, site: Site) -> None:
    _submit(tab, "#studies button")


def _open_details(tab: Tab, site: Site) -> None:
    tab.click("main details > summary")


def _echo_the_pacs(tab: Tab, site: Site) -> None:
    _submit(tab, "button[value=test]")


def _physician_signs_in(tab: Tab, site: Site) -> None:
    login, _name, password = PHYSICIAN
    tab.fill("#login", login)
    tab.fill("#password", password)
    _submit(tab, "button[type=submit]")


def _files_to_review(tab: Tab, site: Site) -> None:
    """Start-up left files for review (health's files_need_review): the dashboard says so."""
    site.main.box.health.set("files_need_review", True)
    tab.reload()


def _a_file_lost(tab: Tab, site: Site) -> None:
    """A study whose file is gone from the device (afra.uplink.lost): its row says what to do."""
    box = site.main.box
    study = box.index.studies()[0]
    box.index.record_failure(
        study.id,
        site.clock.time() + 60,
        "1 file(s) of the study are gone from the storage device (send the study again from "
        "the PACS)",
    )
    tab.reload()


def _patient_opens(tab: Tab, site: Site) -> None:
    lang = tab.evaluate("document.documentElement.lang")
    # A Persian reader types the Solar Hijri date, in Persian digits (medix.l10n).
    typed = l10n.format_date(BIRTH_DATE, lang) if lang == "fa" else BIRTH_DATE.isoformat()
    tab.fill("#birth_date", typed)
    _submit(tab, "button[type=submit]")


def slip_link(site: Site) -> str:
    """Where the slip's QR code leads for the site's study (afra.medis.slip)."""
    return patient_link(site.hub.url + "/patient", site.code)


@dataclass(frozen=True)
class View:
    """One page: where it is served, how it is reached, what must be on the screen."""

    name: str
    where: str  # "main", "fresh" (unclaimed), "image" (runs an image), "hub"
    path: str
    keys: tuple[str, ...]
    signed_in: bool = True
    then: Callable[[Tab, Site], None] | None = None
    path_of: Callable[[Site], str] | None = field(default=None, compare=False)


VIEWS = (
    View(
        "claim",
        "fresh",
        "/claim",
        ("h1", "#f-code", "button[value=code]", "button[value=window]"),
        signed_in=False,
    ),
    View(
        "login",
        "main",
        "/login",
        ("#f-name", "#f-password", "button[value=password]"),
        signed_in=False,
    ),
    View(
        "setup-password",
        "main",
        "/setup/password",
        (".steps", "#f-password", "#f-confirm", "form.card button"),
    ),
    View(
        "setup-network", "main", "/setup/network", ("dl.facts", "[data-ip]", "button[value=keep]")
    ),
    View(
        "setup-network-static",
        "main",
        "/setup/network",
        ("#f-address", "#f-prefix", "#f-gateway", "#f-dns", "button[value=static]"),
        then=_open_details,
    ),
    View(
        "setup-dicom",
        "main",
        "/setup/dicom",
        (
            "#f-ae_title",
            "#f-pacs_host",
            "button[value=test]",
            "button[value=save]",
            "#pacs-admin dl",
            "[data-sightings] li",
        ),
    ),
    View(
        "setup-dicom-tested",
        "main",
        "/setup/dicom",
        ("#echo-result", "button[value=test]", "button[value=save]"),
        then=_echo_the_pacs,
    ),
    View("setup-hub", "main", "/setup/hub", ("dl.facts", "button[value=skip]")),
    View(
        "setup-hub-again",
        "main",
        "/setup/hub",
        ("#f-url", "#f-code", "#f-ca", "#f-ca_text", "button[value=enrol]"),
        then=_open_details,
    ),
    View("setup-summary", "main", "/setup/summary", ("dl.facts", "main form button")),
    View(
        "dashboard",
        "main",
        "/dashboard",
        ("[data-leds]", "#studies tr[data-study]", "#studies .code", "#studies button", "#h-hub"),
    ),
    View(
        "study",
        "main",
        "/dashboard",
        ("#revealed-code", "main form button", "a.button"),
        then=reveal_code,
    ),
    View("audit", "main", "/audit", ("#audit", "#audit tbody tr", "#audit .code")),
    View("settings", "main", "/settings", ("dl.facts", "#f-reopen_password", "#update")),
    View("update", "image", "/settings#update", ("#update", "#f-bundle", "#f-update_password")),
    View("error", "main", "/no-such-page", ("h1", "p.error")),
    # Last of the main box's views: the condition it raises stays for the rest of the run.
    View(
        "dashboard-review",
        "main",
        "/dashboard",
        ('[data-bind-list="health.reasons"] li', "[data-leds]"),
        then=_files_to_review,
    ),
    View(
        "dashboard-lost",
        "main",
        "/dashboard",
        ("#studies tr[data-study]", "#studies .bad"),
        then=_a_file_lost,
    ),
    View("hub-patient", "hub", "/patient", ("h1", "#code", "#birth_date", "button")),
    View("hub-slip-link", "hub", "", ("#code", "#birth_date", "button"), path_of=slip_link),
    View(
        "hub-study", "hub", "", ("h1", "table", "a.button"), then=_patient_opens, path_of=slip_link
    ),
    View(
        "hub-inbox",
        "hub",
        "/physician/sign-in",
        ("h1", "table", "code", "a.button"),
        then=_physician_signs_in,
    ),
)


# -- what is checked on every page ------------------------------------------------------------

# Run in the page: every way a phone's screen can cut, hide or scramble what it shows.
_CHECKS = Path(__file__).with_name("phone_checks.js").read_text(encoding="utf-8")


def problems(tab: Tab, keys: tuple[str, ...]) -> list[str]:
    """What is cut, off the screen, broken or reversed on the page as shown (empty: none)."""
    width = tab.viewport_size["width"] if tab.viewport_size else 0
    found: list[str] = tab.evaluate(_CHECKS, [list(keys), width])
    return found


def path_of(view: View, site: Site) -> str:
    return view.path_of(site) if view.path_of is not None else view.path


@contextlib.contextmanager
def show(site: Site, view: View, width: int, lang: str) -> Iterator[Tab]:
    """The page open in a phone's browser of its own."""
    context = site.context(view.where, width, lang, signed_in=view.signed_in)
    try:
        tab = context.new_page()
        target = path_of(view, site)
        tab.goto(target if target.startswith("http") else site.base(view.where) + target)
        if view.then is not None:
            view.then(tab, site)
        yield tab
    finally:
        context.close()


@contextlib.contextmanager
def running_site(root: Path) -> Iterator[Site]:
    site = Site(root)
    try:
        with sync_playwright() as playwright:
            site.browser = launch(playwright)
            site.start()
            yield site
            site.close()
            site.browser.close()
    finally:
        site.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/screenshots"))
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    failed = 0
    with (
        tempfile.TemporaryDirectory(prefix="afra-screens-") as tmp,
        running_site(Path(tmp)) as site,
    ):
        for width in VIEWPORTS:
            for lang in LANGUAGES:
                for n, view in enumerate(VIEWS, 1):
                    path = out / f"{width}-{lang}-{n:02d}-{view.name}.png"
                    with show(site, view, width, lang) as tab:
                        tab.screenshot(path=str(path), full_page=True)
                        found = problems(tab, view.keys)
                    failed += bool(found)
                    print(f"{path}" + "".join(f"\n  ! {p}" for p in found))
    print(f"{len(VIEWS) * len(VIEWPORTS) * len(LANGUAGES)} screenshots in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
