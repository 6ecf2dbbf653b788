"""The dashboard, once setup is finished: health and the virtual front panel, the queue, recent
studies (Medis codes masked until revealed; revealing and printing are audited), download
jobs, disk, hub, PACS echo, the audit log and its export, the diagnostics bundle, settings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import partial
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup, escape

from afra.medis.codes import format_code
from afra.medis.slip import SlipLanguage, render_slip
from afra.update.manager import UpdateBusy, UploadRejected
from afra_web import security, status
from afra_web.context import Web, current
from afra_web.echo import echo
from afra_web.forms import Errors, Msg, check_password
from afra_web.i18n import (
    fmt_age,
    fmt_bytes,
    fmt_number,
    fmt_percent,
    language,
    notify,
    ntranslate,
    translate,
)
from afra_web.state import Guess
from afra_web.wizard import page_served

bp = Blueprint("dashboard", __name__)

RECENT_STUDIES = 25
TOO_MANY = Msg("Too many wrong attempts. Try again later.")
UPLOAD_CHUNK = 1 << 20

# Where the last system update stands, in words (afra.update.status.PHASES).
UPDATE_PHASES: dict[str, Msg] = {
    "idle": Msg("No update has been installed on this box yet."),
    "downloading": Msg("Fetching {version} from the hub: {progress}%."),
    "checking": Msg("Checking the update's signature."),
    "installing": Msg("Installing {version}: {progress}%. Do not unplug the box."),
    "rebooting": Msg("{version} is installed; the box restarts into it. Do not unplug the box."),
    "trial": Msg("{version} is testing itself. Do not unplug the box."),
    "kept": Msg("{version} passed its self-test and is kept."),
    "rolled_back": Msg("{version} failed its self-test: the box went back to {previous}."),
    "failed": Msg("The update to {version} could not be installed."),
    "refused": Msg("The update was refused."),
}


def update_phase(info: dict[str, Any]) -> Markup:
    """The phase in the page's language, its versions isolated left-to-right (so a version
    such as 1.2.0+b1 reads as it is inside Persian text)."""
    phase = UPDATE_PHASES.get(str(info.get("state")), UPDATE_PHASES["idle"])

    def ltr(value: object) -> Markup:
        return Markup('<bdi dir="ltr" class="nowrap">%s</bdi>') % value

    return escape(translate(phase.text)).format(
        version=ltr(info.get("target") or "?"),
        previous=ltr(info.get("previous") or "?"),
        progress=int(info.get("progress", 0) or 0),
    )


@bp.before_request
def setup_finished() -> Any:
    # The JSON status also serves the wizard's "seen from the PACS" panel.
    if request.endpoint in ("dashboard.api_status", "dashboard.settings", "dashboard.reopen"):
        return None
    if g.progress.finished_at is None:
        return redirect(url_for("wizard.step", name=g.progress.next_step))
    return None


def masked(code: str | None) -> str:
    return "••••-••••-••••" if code else ""


@bp.get("/dashboard")
def index() -> str:
    web = current()
    web.audit.retry()
    appliance = web.appliance
    snap = status.snapshot(appliance)
    flow = status.throughput(appliance)
    return render_template(
        "dashboard/index.html",
        snap=snap,
        flow=flow,
        chart=status.chart_svg(
            flow["bins"],
            translate("Objects received per 5 minutes over the last hour (newest on the right)."),
        ),
        studies=appliance.index.studies(RECENT_STUDIES),
        jobs=status.jobs(appliance),
        masked=masked,
        pacs=appliance.config.pacs,
        dicom=appliance.config.dicom,
        address=web.network.read().ip,
    )


@bp.get("/api/status")
def api_status() -> Response:
    web = current()
    web.audit.retry()  # a disk that recovered is seen while the page is open
    snap = status.snapshot(web.appliance)
    # Words in the page's language, so the page can show them as they change.
    snap["health"]["label"] = translate(snap["health"]["state"])
    snap["health"]["summary"] = translate(snap["health"]["summary"])
    snap["health"]["reasons"] = [translate(r) for r in snap["health"]["reasons"]]
    for led in snap["leds"]:
        led["label"] = translate(led["pattern"])
    # Numbers and measures as the page writes them (Persian digits, units held to numbers).
    queue = snap["queue"]
    queue["waiting_text"] = fmt_number(queue.get("waiting"))
    queue["oldest_text"] = fmt_age(queue.get("oldest_s"))
    queue["bytes_text"] = fmt_bytes(queue.get("bytes"))
    snap["disk"]["percent_text"] = fmt_percent(snap["disk"].get("percent"))
    for seen in snap["sightings"]:
        stores = int(seen.get("stores") or 0)
        seen["stores_text"] = ntranslate("{n} object stored", "{n} objects stored", stores)
    if request.args.get("chart"):
        flow = status.throughput(web.appliance)
        snap["throughput"] = flow
        snap["chart"] = status.chart_svg(
            flow["bins"],
            translate("Objects received per 5 minutes over the last hour (newest on the right)."),
        )
    return jsonify(snap)


def _study(web: Web, study_id: int) -> Any:
    study = web.appliance.index.upload_study(study_id)
    if study is None:
        abort(404)
    return study


@bp.post("/studies/<int:study_id>/reveal")
def reveal(study_id: int) -> str:
    web = current()
    study = _study(web, study_id)
    if not study.medis_code:
        abort(404)
    web.record(
        "code revealed",
        study_uid=study.study_uid,
        patient_name=study.patient_name,
        code=study.medis_code,
    )
    return render_template("dashboard/study.html", study=study, code=format_code(study.medis_code))


def _patient_url(web: Web) -> str:
    config = web.appliance.config
    info = status.hub(web.appliance)
    hub_url = info["url"] or config.hub.url
    return config.hub.patient_url or (f"{hub_url}/patient" if hub_url else "")


_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


@bp.post("/studies/<int:study_id>/slip")
def slip(study_id: int) -> Any:
    web = current()
    study = _study(web, study_id)
    patient_url = _patient_url(web)
    if not study.medis_code or not patient_url:
        return render_template(
            "error.html", message=Msg("No slip yet: the study has no code or the box no hub.")
        ), 409
    # In the page's language: printed from the Persian page, the slip is Persian.
    page = render_slip(
        code=study.medis_code,
        patient_name=study.patient_name,
        study_date=study.study_date,
        study_description=study.study_description,
        center_name=web.appliance.config.box.name,
        hub_patient_url=patient_url,
        language=SlipLanguage(language(), translate),
    )
    web.record(
        "slip printed",
        study_uid=study.study_uid,
        patient_name=study.patient_name,
        code=study.medis_code,
    )
    # The slip is one self-contained page; its one <style> is allowed by hash, nothing inline
    # else. A small script of ours opens the print dialog.
    page = page.replace(
        "</body>", f'<script src="{url_for("static", filename="print.js")}"></script>\n</body>'
    )
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _STYLE.findall(page)
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = security.CSP.replace(
        "style-src 'self'", f"style-src 'self' {hashes}"
    )
    return response


@bp.post("/pacs/echo")
def pacs_echo() -> Any:
    web = current()
    config = web.appliance.config
    if config.pacs is None:
        notify(Msg("No PACS is set up yet."))
        return redirect(url_for(".index") + "#pacs")
    ok, message = echo(config.pacs, config.dicom)
    notify(message)
    web.record("PACS echo", detail=f"{config.pacs.ae_title}: {'ok' if ok else 'failed'}")
    return redirect(url_for(".index") + "#pacs")


@bp.get("/audit")
def audit() -> str:
    log = current().audit
    return render_template("dashboard/audit.html", entries=log.entries(500), problem=log.retry())


@bp.get("/audit.csv")
def audit_csv() -> Response:
    web = current()
    web.record("audit log exported")
    return Response(
        web.audit.csv(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="afra-audit.csv"'},
    )


@bp.get("/diagnostics")
def diagnostics() -> Response:
    web = current()
    data = status.diagnostics_bundle(web.appliance)
    web.record("diagnostics downloaded")
    return Response(
        data,
        mimetype="application/zip",
        headers={"Content-Disposition": 'attachment; filename="afra-diagnostics.zip"'},
    )


@bp.get("/settings")
def settings() -> str:
    return _settings_page(200, {})[0]


def _settings_page(code: int, errors: Errors) -> tuple[str, int]:
    web = current()
    update = status.update(web.appliance)
    info = web.network.read()
    return (
        render_template(
            "dashboard/settings.html",
            config=web.appliance.config,
            errors=errors,
            window=status.setup_window(web.appliance),
            info=info,
            served=page_served(web, info),
            update=update,
            update_phase=update_phase(update),
        ),
        code,
    )


# What the password was typed again for, as the audit log says it (not a URL path).
GRAVE_CHANGES = {
    "/settings/password": "a password change",
    "/settings/update": "a system update",
    "/settings/reopen": "reopening setup",
}


def _password_again(web: Web, errors: Errors, field: str) -> Guess:
    """The admin password typed again for a grave change, counted by the same per-client
    lockout as signing in (state.Lockout)."""
    check = partial(web.state.check_password, request.form.get(field, ""))
    guess = web.state.lockout.guess(request.remote_addr or "", check)
    if not guess.checked:
        errors[field] = TOO_MANY
    elif not guess.right:
        errors[field] = Msg("This password is wrong.")
        web.record("password refused", detail=GRAVE_CHANGES.get(request.path, request.path))
    return guess


@bp.post("/settings/update")
def upload_update() -> Any:
    """A system update uploaded by the technician: checked at once, installed, restarted."""
    web = current()
    updates = web.appliance.updates
    errors: Errors = {}
    if updates is None or not updates.available:
        errors["bundle"] = Msg(
            "Updates are installed on an AFRA box; this one runs from a development checkout."
        )
        return _settings_page(400, errors)
    if updates.status.busy:
        errors["bundle"] = Msg("An update is already under way.")
        return _settings_page(409, errors)
    _password_again(web, errors, "update_password")
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        errors["bundle"] = Msg("Choose the update file (it ends in .raucb).")
    if errors:
        web.record("update refused", detail="form incomplete or wrong password")
        return _settings_page(400, errors)
    assert upload is not None
    name = (upload.filename or "")[:100]
    try:
        # The body's length bounds the file's: the free-space check needs no more room.
        chunks = iter(lambda: upload.stream.read(UPLOAD_CHUNK), b"")
        path = updates.receive(chunks, request.content_length)
        after = updates.accept_upload(path)
    except (UploadRejected, UpdateBusy) as exc:
        web.record("update refused", detail=f"{name}: {exc}")
        errors["bundle"] = Msg("The file was not taken: {why}", {"why": str(exc)})
        return _settings_page(400, errors)
    if after.state in ("refused", "failed"):
        web.record("update refused", detail=f"{name}: {after.message}")
        errors["bundle"] = Msg("The update was refused: {why}", {"why": after.message})
        return _settings_page(400, errors)
    web.record("update started", detail=f"{name}: {after.version}")
    notify(
        Msg(
            "The update was checked and is being installed. The box restarts when it is done; "
            "this page shows how it goes."
        )
    )
    return redirect(url_for(".settings"))


@bp.post("/settings/password")
def change_password() -> Any:
    web = current()
    form = request.form
    errors: Errors = {}
    _password_again(web, errors, "current")  # the right password ends a run of wrong ones
    errors.update(
        check_password(
            form.get("password", ""),
            form.get("confirm", ""),
            avoid=(web.appliance.config.box.name, g.operator.name),
        )
    )
    if errors:
        return _settings_page(400, errors)
    web.state.set_password(form["password"])
    op = g.operator
    security.sign_in(op.name, op.by, web.now(), web.state.progress().epoch, web.state.sessions)
    web.record("password changed")
    notify(Msg("Password changed. Other signed-in devices are signed out."))
    return redirect(url_for(".settings"))


@bp.post("/settings/reopen")
def reopen() -> Any:
    web = current()
    errors: Errors = {}
    guess = _password_again(web, errors, "reopen_password")
    if not guess.right:
        if guess.checked:
            web.record("setup reopen refused", detail="wrong password")
        return _settings_page(400, errors)
    web.state.reopen()
    web.record("setup reopened", detail="by password")
    return redirect(url_for("wizard.step", name="summary"))
