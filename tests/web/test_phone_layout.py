"""Every page on a phone, in English and in Persian (right to left): Debian's Chromium at
360 x 740 and 390 x 844 through Playwright, against running boxes and the reference hub
(tests/web/screenshots.py builds them; `make screenshots` saves what these tests look at).

On each page nothing is wider than the screen (a phone's browser would zoom the page out),
nothing is cut off at its edges, no short value (address, AE title, code, port) is broken
across lines, Latin values read left to right inside Persian text, a card's rows keep the
page's direction, and the page's own controls are on the screen. Then what the pages say is
checked against what is true: one Continue after enrolment, when the hub was last reached,
only the addresses the box serves, and the slip's link opening the hub's form with its code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from afra.app import build_appliance
from afra.medis.codes import format_code
from afra.system.provision import new_setup_code
from afra_web.i18n import fmt_time
from tests.conftest import BoxFactory, make_config, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import storescu
from tests.web.conftest import PASSWORD, AppFactory, finish_setup, post, text
from tests.web.screenshots import (
    BOX_AE,
    LANGUAGES,
    VIEWPORTS,
    VIEWS,
    Served,
    Site,
    View,
    problems,
    reveal_code,
    running_site,
    serve,
    show,
    slip_link,
    walk_to_the_hub_step,
)

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("phone")) as built:
        yield built


CASES = [(view, width, lang) for view in VIEWS for width in VIEWPORTS for lang in LANGUAGES]


@pytest.mark.parametrize(
    ("view", "width", "lang"), CASES, ids=[f"{v.name}-{w}-{lang}" for v, w, lang in CASES]
)
def test_the_page_fits_a_phone(
    site: Site, view: View, width: int, lang: str, tmp_path: Path
) -> None:
    with show(site, view, width, lang) as tab:
        found = problems(tab, view.keys)
        if found:
            shot = tmp_path / f"{view.name}-{width}-{lang}.png"
            tab.screenshot(path=str(shot), full_page=True)
            found.append(f"(screenshot: {shot})")
        assert not found, "\n".join(found)
        assert tab.evaluate("document.documentElement.scrollWidth") <= tab.evaluate(
            "window.innerWidth"
        )
        assert tab.evaluate("document.documentElement.dir") == ("rtl" if lang == "fa" else "ltr")


def test_the_checks_see_what_the_issue_saw(site: Site) -> None:
    """The checks fail on the issue's own symptoms, in the page's real style sheet: a card's
    row flipped by its Latin value, an address broken in a narrow column, a table wider than
    the screen (in Persian, off its left edge) and an address laid out right to left."""
    css = (Path(__file__).parents[2] / "web-setup/afra_web/static/app.css").read_text()
    page = f"""<!doctype html><html dir="rtl" lang="fa"><head>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{css}</style></head>
<body><main>
<table class="cards"><tr><td data-label="بیمار" dir="auto">Rostami Leila</td></tr></table>
<dl class="facts" style="grid-template-columns: 17rem 1fr"><dt>نشانی</dt><dd>192.0.2.10/24</dd></dl>
<div class="table-wrap"><table><tr><td>{"x" * 60}</td></tr></table></div>
<p>اکو <span class="code" style="direction: rtl">(127.0.0.1):</span></p>
</main></body></html>"""
    context = site.phone(360, "fa")
    try:
        tab = context.new_page()
        tab.set_content(page)
        found = "\n".join(problems(tab, ("main", "#missing")))
    finally:
        context.close()
    assert 'td "Rostami Leila" flips to ltr' in found
    assert '"192.0.2.10/24" in dd "192.0.2.10/24" is cut across' in found
    assert "is outside the screen (-" in found
    assert "reads right to left" in found
    assert "nothing shown for #missing" in found


# -- what the pages say is true ----------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_after_enrolment_the_hub_step_has_one_continue(
    site: Site, lang: str, tmp_path: Path, clock: FakeClock
) -> None:
    with contextlib.ExitStack() as stack:
        box = build_appliance(
            make_config(tmp_path / "box", web={"bind": "127.0.0.1", "port": 0}), clock=clock
        )
        stack.callback(box.close)
        served = serve(box, stack)
        walk_to_the_hub_step(served, site.pacs.dicom.port)
        context = site.phone(360, lang, served.cookie(lang, signed_in=True))
        stack.callback(context.close)
        tab = context.new_page()
        tab.goto(served.base + "/setup/hub")
        tab.fill("#f-url", site.hub.url)
        tab.fill("#f-code", site.hub.new_pairing_code())
        tab.set_input_files("#f-ca", str(site.hub.ca_pem_path))
        with tab.expect_navigation():
            tab.click("button[value=enrol]")
        assert tab.locator("#enrol-result").is_visible()
        assert box.identity.enrolled
        controls = tab.locator("main button:visible, main a.button:visible")
        assert controls.count() == 1, controls.all_inner_texts()
        if lang == "en":
            assert controls.inner_text() == "Continue"
        assert problems(tab, ("#enrol-result", "dl.facts", "main a.button")) == []
        with tab.expect_navigation():
            controls.click()
        assert tab.url.endswith("/setup/summary")


def enrol(served: Served, site: Site) -> None:
    """Set up through the wizard with the site's hub (the test client of `served`)."""
    client = served.client
    walk_to_the_hub_step(served, site.pacs.dicom.port)
    form = {
        "url": site.hub.url,
        "code": site.hub.new_pairing_code(),
        "ca_text": Path(site.hub.ca_pem_path).read_text(),
        "action": "enrol",
    }
    assert post(client, "/setup/hub", form).status_code == 200
    assert post(client, "/setup/hub", {"action": "skip"}).status_code == 302
    assert post(client, "/setup/summary").status_code == 302


def test_the_dashboard_says_when_the_hub_was_last_reached(
    site: Site, make_box: BoxFactory, make_app: AppFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """A box restarted after delivering has not reached the hub since it started: the
    dashboard says when it last did, not "not contacted yet"."""
    data_dir = tmp_path / "box"
    hub_settings = {"heartbeat_interval": 3600.0, "retry_base": 1.0}
    box = make_box(data_dir, hub=hub_settings)
    app = make_app(box)
    enrol(Served(box, app, None, app.test_client()), site)  # type: ignore[arg-type]
    files = make_ct_series(tmp_path / "study", n=2, rows=16, cols=16, patient_id="LAST1")
    storescu("127.0.0.1", box.dicom.port, files, aec=BOX_AE)
    clock.advance(61)
    wait_for(
        lambda: any(s.state == "delivered" for s in box.index.studies()),
        timeout=30,
        what="the study delivered to the hub",
    )
    [delivered_at] = [at for at, _size in box.index.delivered_since(0)]
    box.close()

    clock.advance(3600)
    again = build_appliance(make_config(data_dir, hub=hub_settings), clock=clock)  # not started
    try:
        app = make_app(again)
        client = app.test_client()
        post(client, "/login", {"name": "Sara", "password": PASSWORD, "action": "password"})
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert again.uplink.hub_reachable is None  # nothing tried since the restart
        body = text(page)
        assert "not contacted yet" not in body
        with app.test_request_context():
            when = fmt_time(delivered_at)
        assert f"last reached {when}" in body
    finally:
        again.close()


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_the_summary_and_network_pages_show_only_what_the_box_serves(
    bind: str, tmp_path: Path, clock: FakeClock, make_app: AppFactory
) -> None:
    """In emulation the page listens on loopback only: the box's LAN address (192.0.2.10, the
    fake network's) and its .local name lead nowhere, and are not shown as where the box is.
    On a box serving every address, they are."""
    box = build_appliance(
        make_config(tmp_path / "box", web={"bind": bind, "port": 8080}), clock=clock
    )
    try:
        client = make_app(box).test_client()
        finish_setup(client, new_setup_code(tmp_path / "box"))
        post(client, "/settings/reopen", {"reopen_password": PASSWORD})
        network = client.get("/setup/network").get_data(as_text=True)
        summary = client.get("/setup/summary").get_data(as_text=True)
        settings = client.get("/settings").get_data(as_text=True)
    finally:
        box.close()
    ltr = '<bdi dir="ltr">'
    if bind == "127.0.0.1":
        for html in (network, summary):
            assert f"data-page-urls>{ltr}http://127.0.0.1:8080/</bdi></dd>" in html
        for html in (summary, settings):
            assert f"data-served>{ltr}127.0.0.1</bdi></dd>" in html
            assert "192.0.2.10" not in html
        for html in (network, summary, settings):
            assert "afra-test.local" not in html
        assert "192.0.2.10/24" in network  # the network's own settings are still shown
    else:
        urls = f"http://afra-test.local:8080/</bdi><br>{ltr}http://192.0.2.10:8080/</bdi>"
        for html in (network, summary):
            assert f"data-page-urls>{ltr}{urls}</dd>" in html
        for html in (summary, settings):
            assert f"data-served>{ltr}192.0.2.10</bdi> · {ltr}afra-test.local</bdi></dd>" in html


def test_the_summary_names_the_port_the_page_really_has(site: Site) -> None:
    """`web.port = 0` takes a free port: the summary shows that one, not 0."""
    view = View("summary", "main", "/setup/summary", ("[data-page-urls]",))
    with show(site, view, 390, "en") as tab:
        assert tab.inner_text("[data-page-urls]") == site.main.base + "/"
        assert tab.inner_text("[data-served]") == "127.0.0.1"


def test_the_slip_link_opens_the_patient_page_with_the_code_filled_in(site: Site) -> None:
    view = View("study", "main", "/dashboard", ("#revealed-code",), then=reveal_code)
    with show(site, view, 390, "en") as tab:
        with tab.context.expect_page() as opened:
            tab.click("form[target=_blank] button[type=submit]")
        slip = opened.value
        slip.wait_for_load_state()
        link = slip.locator(".url a").get_attribute("href")
        assert link == slip_link(site)  # what the slip's QR code carries
        slip.goto(str(link))
        assert slip.input_value("#code") == format_code(site.code)
        assert slip.evaluate("document.activeElement.id") == "birth_date"
    hub = site.hub.app.test_client()
    for given, shown in [
        (site.code.lower(), format_code(site.code)),
        (format_code(site.code), format_code(site.code)),
        ("not-a-code", ""),
        ('"><script>', ""),
    ]:
        page = hub.get("/patient", query_string={"code": given}).get_data(as_text=True)
        assert f'name="code" value="{shown}"' in page
