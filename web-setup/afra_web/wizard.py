"""The setup wizard: password, network, DICOM, hub, summary (after the claim).

Each step checks its fields and shows a message next to the one that is wrong; a step done is
recorded at once (progress.json), so a reboot resumes at the first step not done. A step's
settings are applied to the running box and saved in the settings overlay. After the summary
the wizard is closed; reopening it takes the password or the button (claim.py, dashboard.py).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from pydantic import ValidationError
from werkzeug.wrappers import Response

from afra.config import DicomSettings, PacsSettings, Peer
from afra.errors import AfraError
from afra.uplink.client import HubRefused, HubUnavailable, HubUntrusted, enrol
from afra_web import security, status
from afra_web.context import Web, current
from afra_web.echo import echo
from afra_web.forms import (
    Errors,
    Msg,
    check_ae_title,
    check_ca_pem,
    check_host,
    check_hub_url,
    check_pairing_code,
    check_password,
    check_port,
    parse_senders,
    resolve_host,
)
from afra_web.i18n import notify
from afra_web.network import NetworkError, NetworkInfo, Served, parse_static, served
from afra_web.overlay import attach_hub, overlay_error
from afra_web.state import STEPS

LOG = logging.getLogger("afra.web")

bp = Blueprint("wizard", __name__, url_prefix="/setup")

TITLES = {
    "password": "Admin password",
    "network": "Network",
    "dicom": "DICOM",
    "hub": "Medix hub",
    "summary": "Summary",
}


@bp.before_request
def wizard_open() -> Response | None:
    if not g.progress.wizard_open:
        notify(Msg("Setup is closed. To change settings, reopen it from Settings."))
        return redirect(url_for("dashboard.index"))
    return None


def _steps() -> list[dict[str, Any]]:
    progress = g.progress
    reachable = True
    out = []
    for name in STEPS:
        done = name in progress.steps_done
        out.append(
            {
                "name": name,
                "title": TITLES[name],
                "done": done,
                "skipped": name in progress.skipped,
                "reachable": reachable,
            }
        )
        if not done:
            reachable = False
    return out


def _page(name: str, code: int = 200, **context: Any) -> tuple[str, int]:
    return (
        render_template(
            f"wizard/{name}.html", step=name, steps=_steps(), title=TITLES[name], **context
        ),
        code,
    )


def page_served(web: Web, info: NetworkInfo) -> Served:
    """Where this page is served, as the box really listens (`web.bind`; the port it got
    when `web.port` is 0), named by the host name mDNS advertises when there is one."""
    port = web.settings.port or int(request.environ.get("SERVER_PORT") or 0)
    advert = getattr(getattr(web.appliance, "mdns", None), "advert", None)
    host = getattr(advert, "host", None)
    name = host.rstrip(".") if isinstance(host, str) else ""
    return served(web.settings.bind, port, info, name)


def _advance(name: str) -> Response:
    g.progress = current().state.step_done(name)
    return redirect(url_for(".step", name=g.progress.next_step))


@bp.route("/<name>", methods=["GET", "POST"])
def step(name: str) -> Any:
    if name not in STEPS:
        abort(404)
    allowed = {s["name"] for s in _steps() if s["reachable"]}
    if name not in allowed:
        return redirect(url_for(".step", name=g.progress.next_step))
    view = {
        "password": password_step,
        "network": network_step,
        "dicom": dicom_step,
        "hub": hub_step,
        "summary": summary_step,
    }[name]
    return view(current())


# -- 2. admin password --------------------------------------------------------------------------


def password_step(web: Web) -> Any:
    if request.method == "GET":
        return _page("password", errors={}, has_password=web.state.has_password)
    form = request.form
    avoid = (web.appliance.config.box.name, g.operator.name)
    errors = check_password(form.get("password", ""), form.get("confirm", ""), avoid=avoid)
    if errors:
        return _page("password", 400, errors=errors, has_password=web.state.has_password)
    web.state.set_password(form["password"])
    # The password's epoch changed, which ends every other session; this one goes on.
    op = g.operator
    security.sign_in(op.name, op.by, web.now(), web.state.progress().epoch, web.state.sessions)
    web.record("password set")
    return _advance("password")


# -- 3. network ---------------------------------------------------------------------------------


def network_step(web: Web) -> Any:
    info = web.network.read()
    page = page_served(web, info)
    port = page.port
    if request.method == "GET":
        return _page(
            "network", info=info, errors={}, form={}, moved_to=None, port=port, served=page
        )
    action = request.form.get("action", "keep")
    if action == "keep":
        return _advance("network")
    errors: Errors = {}
    static = None
    if action == "static":
        static, found = parse_static(
            request.form.get("address", ""),
            request.form.get("prefix", ""),
            request.form.get("gateway", ""),
            request.form.get("dns", ""),
        )
        errors = {k: Msg(v) for k, v in found.items()}
    elif action != "dhcp":
        abort(400)
    if not errors:
        try:
            web.network.apply(static)
        except NetworkError as exc:
            errors["apply"] = Msg("The box could not change its network: {why}", {"why": str(exc)})
    if errors:
        return _page(
            "network",
            400,
            info=info,
            errors=errors,
            form=request.form,
            moved_to=None,
            port=port,
            served=page,
        )
    web.record("network changed", detail=static.address if static else "DHCP")
    g.progress = web.state.step_done("network")
    moved_to = static.ip if static else None
    return _page(
        "network",
        info=info,
        errors={},
        form={},
        moved_to=moved_to,
        applied=True,
        port=port,
        served=page,
    )


# -- 4. DICOM -------------------------------------------------------------------------------


def _dicom_form(web: Web) -> dict[str, str]:
    """The step's fields as the box runs now; the PACS's own peer entry is not repeated among
    the other senders (saving adds it again)."""
    config = web.appliance.config
    pacs = config.pacs
    others = [
        f"{p.ae_title} {p.host}"
        for p in config.dicom.peers
        if pacs is None or p.ae_title != pacs.ae_title
    ]
    return {
        "ae_title": config.dicom.ae_title,
        "port": str(_listening_port(web)),
        "pacs_host": pacs.host if pacs else "",
        "pacs_port": str(pacs.port) if pacs else "104",
        "pacs_ae": pacs.ae_title if pacs else "",
        "senders": "\n".join(others),
    }


def _check_pacs(form: Any, errors: Errors) -> tuple[str, int, str]:
    host = check_host(form.get("pacs_host", ""))
    port = check_port(form.get("pacs_port", ""))
    ae = check_ae_title(form.get("pacs_ae", ""))
    for key, value in (("pacs_host", host), ("pacs_port", port), ("pacs_ae", ae)):
        if isinstance(value, Msg):
            errors[key] = value
    return (
        host if isinstance(host, str) else "",
        port if isinstance(port, int) else 0,
        ae if isinstance(ae, str) else "",
    )


def _listening_port(web: Web) -> int:
    dicom = web.appliance.dicom
    return dicom.port if dicom.running else web.appliance.config.dicom.port


def _dicom_page(web: Web, code: int, form: Any, errors: Errors, **extra: Any) -> Any:
    info = web.network.read()
    box_ae = web.appliance.config.dicom.ae_title
    return _page(
        "dicom",
        code,
        form=form,
        errors=errors,
        address=info.ip or "127.0.0.1",
        hostname=info.hostname,
        live_ae=box_ae,
        live_port=_listening_port(web),
        seen=status.sightings(web.appliance),
        allow_any=web.appliance.config.dicom.allow_any_peer,
        **extra,
    )


def dicom_step(web: Web) -> Any:
    if request.method == "GET":
        return _dicom_page(web, 200, _dicom_form(web), {})
    form = request.form
    errors: Errors = {}
    action = form.get("action", "save")
    box_ae = check_ae_title(form.get("ae_title", ""))
    if isinstance(box_ae, Msg):
        errors["ae_title"] = box_ae
    pacs_host, pacs_port, pacs_ae = _check_pacs(form, errors)
    if action == "test":
        return _echo(web, form, errors, box_ae, pacs_host, pacs_port, pacs_ae)
    port = check_port(form.get("port", ""))
    if isinstance(port, Msg):
        errors["port"] = port
    elif port == web.settings.port:
        errors["port"] = Msg("Port {n} is the web page's port; choose another.", {"n": port})
    senders = parse_senders(form.get("senders", ""))
    if isinstance(senders, Msg):
        errors["senders"] = senders
    pacs_ip = resolve_host(pacs_host) if pacs_host and "pacs_host" not in errors else ""
    if isinstance(pacs_ip, Msg):
        errors["pacs_host"] = pacs_ip
    if errors:
        return _dicom_page(web, 400, form, errors)
    assert isinstance(port, int) and isinstance(box_ae, str) and isinstance(senders, list)
    assert isinstance(pacs_ip, str)
    peers = [Peer(ae_title=pacs_ae, host=pacs_ip), *senders]
    changes: dict[str, dict[str, Any] | None] = {
        "dicom": {
            "ae_title": box_ae,
            "port": port,
            "peers": [p.model_dump() for p in peers],
        },
        "pacs": {"ae_title": pacs_ae, "host": pacs_host, "port": pacs_port},
    }
    try:
        config = web.overlay.merged(web.appliance.config, changes)
    except ValidationError as exc:
        errors["form"] = Msg("These settings cannot be used: {why}", {"why": overlay_error(exc)})
        return _dicom_page(web, 400, form, errors)
    try:
        web.appliance.apply_dicom(config)
    except AfraError as exc:
        errors["port"] = Msg("The box cannot listen there: {why}", {"why": str(exc)})
        return _dicom_page(web, 400, form, errors)
    web.overlay.write(changes)
    web.record(
        "DICOM settings changed",
        detail=f"AE {box_ae}, port {port}, PACS {pacs_ae}@{pacs_host}:{pacs_port}",
    )
    notify(Msg("Saved. The box now answers as {ae} on port {port}.", {"ae": box_ae, "port": port}))
    return _advance("dicom")


def _echo(web: Web, form: Any, errors: Errors, box_ae: Any, host: str, port: int, ae: str) -> Any:
    if errors:
        return _dicom_page(web, 400, form, errors)
    local = DicomSettings.model_validate(
        {
            **web.appliance.config.dicom.model_dump(),
            "ae_title": box_ae,
            "acse_timeout": 10,
            "dimse_timeout": 10,
            "network_timeout": 10,
        }
    )
    ok, message = echo(PacsSettings(ae_title=ae, host=host, port=port), local)
    result = {"ok": ok, "text": message}
    web.record("PACS echo", detail=f"{ae}@{host}:{port}: {'ok' if result['ok'] else 'failed'}")
    return _dicom_page(web, 200, form, errors, echo=result)


# -- 5. hub ---------------------------------------------------------------------------------


def _hub_info(web: Web) -> dict[str, Any]:
    return status.hub(web.appliance)


def hub_step(web: Web) -> Any:
    info = _hub_info(web)
    default_url = web.appliance.config.hub.url or info.get("url", "")
    if request.method == "GET":
        return _page("hub", info=info, errors={}, form={"url": default_url}, result=None)
    form = request.form
    if form.get("action") == "skip":
        g.progress = web.state.step_done("hub", skipped=not info["enrolled"])
        web.record("hub step skipped" if not info["enrolled"] else "hub step kept")
        return redirect(url_for(".step", name=g.progress.next_step))
    errors: Errors = {}
    url = check_hub_url(form.get("url", ""))
    code = check_pairing_code(form.get("code", ""))
    upload = request.files.get("ca")
    raw = upload.read() if upload is not None and upload.filename else b""
    if not raw:
        raw = form.get("ca_text", "").encode("utf-8", "replace")
    ca = check_ca_pem(raw)
    for key, value in (("url", url), ("code", code), ("ca", ca)):
        if isinstance(value, Msg):
            errors[key] = value
    if errors:
        return _page("hub", 400, info=info, errors=errors, form=form, result=None)
    assert isinstance(url, str) and isinstance(code, str) and isinstance(ca, str)
    node_id = _enrol(web, url, code, ca, errors)
    if node_id is None:
        web.record("enrolment failed", detail=f"{url}: {next(iter(errors.values())).text}")
        return _page("hub", 400, info=info, errors=errors, form=form, result=None)
    web.overlay.write({"hub": {"url": url}})
    attach_hub(web.appliance)
    web.record("enrolled", detail=f"{url} as node {node_id}")
    g.progress = web.state.step_done("hub")
    return _page("hub", info=_hub_info(web), errors={}, form={"url": url}, result=node_id)


def _enrol(web: Web, url: str, code: str, ca: str, errors: Errors) -> str | None:
    appliance = web.appliance
    with tempfile.NamedTemporaryFile(
        "w", dir=web.state.directory, prefix=".hub-ca-", suffix=".pem", encoding="ascii"
    ) as ca_file:
        ca_file.write(ca)
        ca_file.flush()
        try:
            return enrol(
                appliance.identity,
                hub_url=url,
                pairing_code=code,
                ca_file=Path(ca_file.name),
                node_name=appliance.config.box.name,
                timeout=min(20.0, appliance.config.hub.request_timeout),
            )
        except HubUntrusted:
            errors["ca"] = Msg(
                "The hub's certificate is not signed by this CA: check that the CA file is "
                "the one from this hub's portal."
            )
        except HubUnavailable as exc:
            errors["url"] = Msg("The box cannot reach the hub: {why}", {"why": str(exc)})
        except HubRefused as exc:
            errors["code"] = Msg("The hub refused the pairing code: {why}", {"why": str(exc)})
        except (AfraError, OSError, ValueError) as exc:
            LOG.exception("enrolment failed")
            errors["form"] = Msg("Enrolment failed: {why}", {"why": str(exc)})
    return None


# -- 6. summary -----------------------------------------------------------------------------


def summary_step(web: Web) -> Any:
    if request.method == "POST":
        web.state.finish()
        web.report_setup()
        web.record("setup finished")
        notify(Msg("Setup is complete. This is the box's dashboard."))
        return redirect(url_for("dashboard.index"))
    appliance = web.appliance
    info = web.network.read()
    page = page_served(web, info)
    return _page(
        "summary",
        config=appliance.config,
        info=info,
        hub=_hub_info(web),
        seen=status.sightings(appliance),
        port=page.port,
        served=page,
        has_password=web.state.has_password,
    )
