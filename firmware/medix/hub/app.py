"""The reference hub as a Flask application: `create_hub()` and its blueprints.

`node_api` (everything under /medix/v1, docs/medix.md), `admin` (bearer token), `patient`
(the Medis code page and study downloads), `physician` (sign-in and sign-out), `inbox` (the
signed-in physician's own studies), `files` (files nodes prepared for the hub's users, by
capability URL), `webhook` (download progress from nodes) and `webhook_tools` (a redirect
trap for tests). Routes parse and answer; the rules live behind `Hub` (medix.hub.core, the
facade over the hub's parts) and in medix.hub.physicians. Errors are
`application/problem+json`, except on the HTML pages.

Every HTML page takes a token from its client address's bucket first (medix.hub.throttle);
lookups by something guessable (a code, a link, a file id, a password) also count wrong
guesses. Physicians' cookies are HttpOnly, SameSite=Strict and, over TLS, Secure with the
`__Host-` prefix (no other host can set them).

A node is identified by the client certificate cheroot verified and put in
`request.environ["SSL_CLIENT_CERT"]` (PEM), looked up by its SHA-256 fingerprint.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from typing import TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    render_template,
    request,
    send_file,
    url_for,
)
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from medix.clock import Clock
from medix.hub import i18n, schemas
from medix.hub.codes import format_code, normalise_code
from medix.hub.core import Hub, HubConfig
from medix.hub.errors import HubError, validation_detail
from medix.hub.multipart import compressed_limit
from medix.hub.physicians import Physicians
from medix.hub.store import SessionRow
from medix.hub.throttle import client_key
from medix.hub.updates import MAX_BUNDLE_BYTES
from medix.models import (
    API_PREFIX,
    AuditBatch,
    CommandResult,
    CommitRequest,
    EnrolRequest,
    FileCommit,
    FileRegistration,
    Heartbeat,
    PartAck,
    Policy,
    Problem,
    StudyRegistration,
    WebhookProgress,
)

__all__ = ["HubConfig", "create_hub", "hub_of"]

log = logging.getLogger(__name__)

EXTENSION = "medix_hub"
MAX_PART_SIZE = 8 * 1048576  # StudyRegistration.part_size's upper bound
MAX_WEBHOOK_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
VENDOR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HTML_PREFIXES = ("/patient", "/inbox", "/download", "/files/", "/physician")
SESSION_COOKIE = "medix-session"
FORM_COOKIE = "medix-form"
CSRF_FIELD = "csrf_token"
SIGN_IN = "sign-in"  # CSRF token purposes
SIGN_OUT = "sign-out"
# Where /webhook/v1/redirect points: the cloud metadata address a webhook must never reach.
REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/"
HTML_SECURITY_HEADERS = {
    # Everything a page needs is inline CSS and same-origin links and forms.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    # Download links carry a token: never leak them to another site.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

M = TypeVar("M", bound=BaseModel)

node_api = Blueprint("node_api", __name__, url_prefix=API_PREFIX)
admin = Blueprint("admin", __name__, url_prefix="/admin")
patient = Blueprint("patient", __name__)
inbox = Blueprint("inbox", __name__, url_prefix="/inbox")
physician = Blueprint("physician", __name__, url_prefix="/physician")
webhook = Blueprint("webhook", __name__, url_prefix="/webhook/v1/pacs")
webhook_tools = Blueprint("webhook_tools", __name__, url_prefix="/webhook/v1")
files = Blueprint("files", __name__, url_prefix="/files")


def hub_of(app: Flask) -> Hub:
    """The Hub behind an application made by create_hub."""
    hub: Hub = app.extensions[EXTENSION]
    return hub


def _hub() -> Hub:
    return hub_of(current_app)


def _address() -> str:
    return request.remote_addr or "unknown"


def _client() -> str:
    """Who a rate limit counts: the peer address (an IPv6 client by its /64).

    Behind a reverse proxy every client has the proxy's address: run the hub there with
    werkzeug's ProxyFix set to the proxy's own X-Forwarded-For, or every client shares one
    bucket."""
    return client_key(request.remote_addr)


# -- request and response helpers ------------------------------------------------------------


def _read_body(limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading them all."""
    length = request.content_length
    if length is not None and length > limit:
        raise HubError(413, "Body too large", f"{length} bytes; the limit here is {limit}")
    chunks: list[bytes] = []
    total = 0
    stream = request.stream
    while True:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise HubError(413, "Body too large", f"the limit here is {limit} bytes")
    return b"".join(chunks)


def _json_bytes(limit: int | None = None) -> bytes:
    """The raw JSON body: 415 when the Content-Type is not JSON, 413 when too big."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise HubError(415, "JSON expected", f"Content-Type is {mimetype}")
    return _read_body(limit or _hub().config.max_json_bytes)


def _body(model: type[M], limit: int | None = None) -> M:
    """The JSON body parsed as `model`: 415 not JSON, 400 malformed, 422 invalid, 413 big."""
    return _parse(model, _json_bytes(limit))


def _parse(model: type[M], data: bytes) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise HubError(400, "Malformed JSON", "the body is not a JSON document") from exc
        raise HubError(422, f"Invalid {model.__name__}", validation_detail(exc)) from exc


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        model.model_dump_json(), status=status, mimetype="application/json", headers=headers
    )


def _no_content() -> Response:
    return Response(status=204)


def _problem(error: HubError) -> Response:
    body = Problem(title=error.title, detail=error.detail, status=error.status)
    return Response(
        body.model_dump_json(),
        status=error.status,
        mimetype="application/problem+json",
        headers=error.headers,
    )


def _html_request() -> bool:
    return request.path == "/" or request.path.startswith(HTML_PREFIXES)


def _error_response(error: HubError) -> Response:
    if not _html_request():
        return _problem(error)
    page = render_template("error.html", error=error, hub_name=_hub().config.hub_name)
    return Response(page, status=error.status, mimetype="text/html", headers=error.headers)


def _render(template: str, status: int = 200, **context: object) -> Response:
    page = render_template(template, hub_name=_hub().config.hub_name, **context)
    return Response(page, status=status, mimetype="text/html")


def _see_other(endpoint: str) -> Response:
    return Response(status=303, headers={"Location": url_for(endpoint)})


def _cookie_name(base: str) -> str:
    # __Host-: the browser takes it only from this host over TLS, for path /, so a sibling
    # host cannot plant a session or a form nonce. Plain http (tests, debugging) cannot use it.
    return f"__Host-{base}" if request.is_secure else base


def _set_cookie(response: Response, base: str, value: str) -> None:
    response.set_cookie(
        _cookie_name(base),
        value,
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def _drop_cookie(response: Response, base: str) -> None:
    response.delete_cookie(
        _cookie_name(base), path="/", secure=request.is_secure, httponly=True, samesite="Strict"
    )


def _session_token() -> str | None:
    return request.cookies.get(_cookie_name(SESSION_COOKIE))


def _signed_in() -> SessionRow | None:
    return _hub().physicians.session(_session_token())


# -- node -> hub -----------------------------------------------------------------------------


@node_api.before_request
def _identify_node() -> None:
    if request.endpoint == "node_api.enrol":
        return
    # cheroot puts the client certificate there only after the TLS layer verified it
    # against the hub CA; the fingerprint lookup then names the node.
    g.node = _hub().node_for_certificate(request.environ.get("SSL_CLIENT_CERT"))


@node_api.post("/enrol")
def enrol() -> Response:
    answer = _hub().enrol(_body(EnrolRequest), _address())
    return _json(answer)


@node_api.post("/heartbeat")
def heartbeat() -> Response:
    return _json(_hub().heartbeat(g.node, _body(Heartbeat)))


@node_api.post("/audit")
def audit() -> Response:
    return _json(_hub().audit(g.node, _body(AuditBatch)))


@node_api.post("/studies")
def register_study() -> Response:
    registration, created = _hub().register(g.node, _body(StudyRegistration))
    location = f"{API_PREFIX}/uploads/{registration.upload_id}"
    return _json(registration, 201 if created else 200, {"Location": location})


@node_api.get("/uploads/<upload_id>")
def upload_state(upload_id: str) -> Response:
    return _json(_hub().upload_state(g.node, upload_id))


def _part(put: Callable[..., PartAck], resource_id: str, n: int) -> Response:
    """A part of an upload or a file: the body, its encoding and its declared hash."""
    ack = put(
        g.node,
        resource_id,
        n,
        _read_body,
        request.headers.get("Content-Encoding", "identity"),
        request.headers.get("X-Medix-Part-SHA256", ""),
    )
    return _json(ack)


@node_api.put("/uploads/<upload_id>/parts/<int:n>")
def put_part(upload_id: str, n: int) -> Response:
    return _part(_hub().put_part, upload_id, n)


@node_api.post("/uploads/<upload_id>/commit")
def commit(upload_id: str) -> Response:
    return _json(_hub().commit(g.node, upload_id, _body(CommitRequest)))


@node_api.post("/files")
def register_file() -> Response:
    upload, created = _hub().register_file(g.node, _body(FileRegistration))
    location = f"{API_PREFIX}/files/{upload.file_id}"
    return _json(upload, 201 if created else 200, {"Location": location})


@node_api.get("/files/<file_id>")
def file_state(file_id: str) -> Response:
    return _json(_hub().file_state(g.node, file_id))


@node_api.put("/files/<file_id>/parts/<int:n>")
def put_file_part(file_id: str, n: int) -> Response:
    return _part(_hub().put_file_part, file_id, n)


@node_api.post("/files/<file_id>/commit")
def commit_file(file_id: str) -> Response:
    return _json(_hub().commit_file(g.node, file_id, _body(FileCommit)))


@node_api.get("/commands")
def poll_commands() -> Response:
    text = request.args.get("wait", "0")
    try:
        wait = int(text)
    except ValueError:
        raise HubError(400, "Bad wait", "wait is a whole number of seconds (1-60)") from None
    if wait < 0:
        raise HubError(400, "Bad wait", "wait is a whole number of seconds (1-60)")
    return _json(_hub().poll_commands(g.node, float(wait)))


@node_api.get("/updates/<sha256>")
def update_bundle(sha256: str) -> Response:
    path = _hub().update_bundle(g.node, sha256)
    # conditional: byte ranges, so a node resumes a download cut off halfway
    return send_file(
        path, mimetype="application/octet-stream", conditional=True, etag=sha256, max_age=0
    )


@node_api.post("/commands/<command_id>/result")
def command_result(command_id: str) -> Response:
    _hub().command_result(g.node, command_id, _body(CommandResult))
    return _no_content()


# -- admin -----------------------------------------------------------------------------------


@admin.before_request
def _check_admin_token() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = _hub().admin_token
    given = token.strip()
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given, expected):
        raise HubError(
            401,
            "Admin token required",
            "send Authorization: Bearer <admin token>",
            {"WWW-Authenticate": 'Bearer realm="medix-hub"'},
        )


@admin.post("/pairing-codes")
def new_pairing_code() -> Response:
    return _json(_hub().new_pairing_code(), 201)


@admin.get("/policy")
def current_policy() -> Response:
    return _json(_hub().policy())


@admin.post("/policy")
def publish_policy() -> Response:
    return _json(_hub().publish_policy(_body(Policy)))


@admin.put("/updates")
def add_update() -> Response:
    request.max_content_length = MAX_BUNDLE_BYTES  # above the app's outer fence, this route only
    version = request.args.get("version", "")
    compatible = request.args.get("compatible", "")
    length = request.content_length
    if length is not None and length > MAX_BUNDLE_BYTES:
        raise HubError(413, "Body too large", f"{length} bytes; the limit is {MAX_BUNDLE_BYTES}")
    stream = request.stream
    chunks = iter(lambda: stream.read(READ_CHUNK), b"")
    offer = _hub().add_update(
        chunks, version=version, compatible=compatible, limit=MAX_BUNDLE_BYTES
    )
    if request.args.get("publish") in ("1", "true", "yes"):
        _hub().publish_update(offer)
    return _json(offer, 201)


@admin.get("/nodes")
def list_nodes() -> Response:
    return _json(_hub().nodes())


@admin.post("/nodes/<node_id>/commands")
def queue_command(node_id: str) -> Response:
    order = _body(schemas.CommandOrder)
    command_id = _hub().queue_command(node_id, order.type, order.args)
    return _json(schemas.CommandQueued(id=command_id), 201)


@admin.get("/nodes/<node_id>/commands")
def node_commands(node_id: str) -> Response:
    return _json(_hub().node_commands(node_id))


@admin.post("/nodes/<node_id>/revoke")
def revoke_node(node_id: str) -> Response:
    _hub().revoke_node(node_id)
    return _no_content()


@admin.get("/studies")
def list_studies() -> Response:
    return _json(_hub().studies())


@admin.get("/studies/<upload_id>/instances/<sop_instance_uid>")
def instance_bytes(upload_id: str, sop_instance_uid: str) -> Response:
    data = _hub().instance_bytes(upload_id, sop_instance_uid)
    return Response(data, mimetype="application/dicom")


@admin.get("/webhooks")
def list_webhooks() -> Response:
    return _json(_hub().webhooks())


@admin.get("/audit")
def list_audit() -> Response:
    return _json(_hub().audit_records(request.args.get("node") or None))


@admin.post("/webhooks/fail-next")
def fail_next_webhooks() -> Response:
    order = _body(schemas.WebhookFailNext)
    return _json(_hub().fail_webhooks(order.count, order.status))


@admin.get("/files")
def list_files() -> Response:
    return _json(_hub().files())


@admin.post("/physicians")
def add_physician() -> Response:
    account = _hub().physicians.add(_body(schemas.PhysicianOrder))
    return _json(account, 201, {"Location": f"/admin/physicians/{account.login}"})


@admin.get("/physicians")
def list_physicians() -> Response:
    return _json(_hub().physicians.accounts())


@admin.get("/physicians/<login>")
def physician_account(login: str) -> Response:
    return _json(_hub().physicians.info(login))


@admin.put("/physicians/<login>/password")
def set_physician_password(login: str) -> Response:
    order = _body(schemas.PasswordOrder)
    return _json(_hub().physicians.set_password(login, order.password))


@admin.delete("/physicians/<login>")
def remove_physician(login: str) -> Response:
    _hub().physicians.remove(login)
    return _no_content()


# -- patient, inbox, webhook -----------------------------------------------------------------


@patient.route("/patient", methods=["GET", "POST"])
def form() -> Response:
    if request.method == "GET":
        return _render("patient_form.html", code=_code_in_link(), error=None, locked=False)
    code = request.form.get("code", "")
    birth_date = i18n.birth_date(request.form.get("birth_date", ""))  # Solar Hijri in Persian
    hub = _hub()
    client = _client()
    try:
        with hub.guessing(client):
            studies = hub.patient_access(code, birth_date, client)
    except HubError as error:
        response = _render(
            "patient_form.html",
            status=error.status,
            code=code,
            error=error,
            locked=error.status == 429,
        )
        response.headers.update(error.headers)
        return response
    return _render(
        "study_list.html",
        heading=i18n.gettext("Your study"),
        studies=studies,
        show_code=False,
        show_patient=True,
    )


def _code_in_link() -> str:
    """The Medis code the slip's QR link carries (`/patient?code=...`, afra.medis.slip), as
    the form shows it: the patient then types only the birth date. Anything that is not a
    code's twelve letters and digits is left out."""
    code = normalise_code(request.args.get("code", "")[:40])
    return format_code(code) if len(code) == 12 and code.isascii() and code.isalnum() else ""


@patient.get("/download/<token>")
def download(token: str) -> Response:
    hub = _hub()
    with hub.guessing(_client()):
        handle, name = hub.study_zip(token)
    return send_file(handle, mimetype="application/zip", as_attachment=True, download_name=name)


@physician.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response:
    desk = _hub().physicians
    if request.method == "GET":
        return _sign_in_form()
    nonce = request.cookies.get(_cookie_name(FORM_COOKIE))
    if not desk.form_token_ok(SIGN_IN, nonce, request.form.get(CSRF_FIELD)):
        # No nonce cookie (another site's form, SameSite) or a token that is not ours.
        refused = HubError(400, "Form expired", "the sign-in form was not this hub's; try again")
        return _sign_in_form(refused)
    login = request.form.get("login", "")
    try:
        token = desk.sign_in(login, request.form.get("password", ""), _client())
    except HubError as error:
        return _sign_in_form(error, login=login[:64], nonce=nonce)
    previous = _session_token()
    if previous:
        desk.sign_out(previous)  # one browser, one session: the new one replaces it
    response = _see_other("inbox.studies")
    _set_cookie(response, SESSION_COOKIE, token)
    _drop_cookie(response, FORM_COOKIE)
    return response


def _sign_in_form(
    error: HubError | None = None, *, login: str = "", nonce: str | None = None
) -> Response:
    desk = _hub().physicians
    nonce = nonce or Physicians.new_form_nonce()
    response = _render(
        "sign_in.html",
        status=error.status if error else 200,
        error=error,
        login=login,
        csrf_field=CSRF_FIELD,
        csrf=desk.form_token(SIGN_IN, nonce),
        locked=error is not None and error.status == 429,
    )
    if error is not None:
        response.headers.update(error.headers)
    _set_cookie(response, FORM_COOKIE, nonce)
    return response


@physician.post("/sign-out")
def sign_out() -> Response:
    desk = _hub().physicians
    token = _session_token()
    row = desk.session(token)
    if token and row is not None:
        if not desk.form_token_ok(SIGN_OUT, row.token_hash, request.form.get(CSRF_FIELD)):
            raise HubError(400, "Form expired", "sign out from the inbox page")
        desk.sign_out(token)  # the session ends at the hub: the cookie opens nothing now
    response = _see_other("physician.sign_in")
    _drop_cookie(response, SESSION_COOKIE)
    return response


@inbox.get("")
def studies() -> Response:
    row = _signed_in()
    if row is None:
        return _see_other("physician.sign_in")
    return _render(
        "study_list.html",
        heading=i18n.gettext("Studies referred by {name}", name=i18n.person_name(row.name)),
        studies=_hub().physician_studies(row.name),
        show_code=True,
        show_patient=True,
        csrf_field=CSRF_FIELD,
        sign_out_csrf=_hub().physicians.form_token(SIGN_OUT, row.token_hash),
    )


@inbox.get("/<path:name>")
def named_inbox(name: str) -> Response:
    """The old per-name address: the name is ignored, everyone sees only their own."""
    return _see_other("inbox.studies")


@files.get("/<file_id>/<name>")
def saved_file(file_id: str, name: str) -> Response:
    hub = _hub()
    with hub.guessing(_client()):
        path, media_type = hub.saved_file(file_id, name)
    response = send_file(
        path, mimetype=media_type, as_attachment=True, download_name=name, conditional=True
    )
    # The URL is the capability: keep it (and the file) out of shared caches and referrers.
    response.headers["Cache-Control"] = "private, no-store"
    return response


@webhook.post("/<vendor>")
def webhook_progress(vendor: str) -> Response:
    if not VENDOR_PATTERN.match(vendor):
        raise HubError(404, "No such vendor", "vendor names are letters, digits, . _ -")
    # The signature covers the bytes as sent: keep them beside the parsed body.
    data = _json_bytes(MAX_WEBHOOK_BYTES)
    progress = _parse(WebhookProgress, data)
    _hub().record_webhook(vendor, progress, dict(request.headers), _address(), data)
    return _no_content()


@webhook_tools.route("/redirect", methods=["GET", "POST", "PUT"])
def webhook_redirect() -> Response:
    """A webhook target that redirects to the metadata address: a node must not follow."""
    return Response(status=302, headers={"Location": REDIRECT_TARGET})


# -- the application -------------------------------------------------------------------------


def _medis(value: str) -> str:
    return format_code(normalise_code(value))


def create_hub(config: HubConfig | None = None, *, clock: Clock | None = None) -> Flask:
    """A reference hub application; `hub_of(app).close()` releases its database."""
    config = config or HubConfig()
    hub = Hub(config, clock)
    app = Flask(__name__)
    # The pages are templates/*.html beside this module (package data); their language,
    # numbers, dates and names come from medix.hub.i18n.
    i18n.install(app)
    app.jinja_env.filters.update(medis=_medis)
    # Bodies are bounded per route (_read_body); this is only the outer fence.
    app.config["MAX_CONTENT_LENGTH"] = max(config.max_json_bytes, compressed_limit(MAX_PART_SIZE))
    app.extensions[EXTENSION] = hub
    for blueprint in (node_api, admin, patient, physician, inbox, files, webhook, webhook_tools):
        app.register_blueprint(blueprint)

    @app.before_request
    def _admit() -> None:
        if _html_request():
            _hub().admit(_client())

    @app.get("/")
    def index() -> Response:
        return _render("index.html")

    @app.errorhandler(HubError)
    def _hub_error(error: HubError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        status = exc.code or 500
        return _error_response(HubError(status, exc.name, exc.description or "", headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error_response(HubError(500, "Internal error", "the hub logged the details"))

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if _html_request():
            for name, value in HTML_SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    return app
