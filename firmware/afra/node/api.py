"""The node-side HTTP API of the seed, for a hub that can reach the box (docs/medix.md).

    POST /api/study/download        DownloadRequest      -> 202 DownloadAccepted
    POST /api/study/report-status   ReportStatusRequest  -> 200 ReportStatusResponse
    GET  /api/jobs/<job_id>                              -> 200 the job and its timeline

Every request carries `Authorization: Bearer <token>`, the token the hub received at
enrolment (the box keeps only its hash). Served over TLS with the node's enrolment
certificate, which the hub can verify with its own CA. Errors are problem+json.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter
from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from afra.node.jobs import DownloadManager
from afra.node.reports import ReportStatusService
from afra.node.webhook import WebhookRefused
from afra.uplink.identity import NodeIdentity
from medix.models import DownloadRequest, Problem, ReportStatusRequest

MAX_BODY = 256 * 1024


def _problem(status: int, title: str, detail: str = "") -> Response:
    body = Problem(title=title, detail=detail, status=status).model_dump_json()
    return Response(body, status=status, mimetype="application/problem+json")


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def create_node_api(
    identity: NodeIdentity, downloads: DownloadManager, reports: ReportStatusService
) -> Flask:
    app = Flask("afra.node.api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.before_request
    def _authenticate() -> Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not identity.api_token_ok(token.strip()):
            response = _problem(401, "Unauthorized", "a valid hub token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="afra"'
            return response
        return None

    def _body(model: type[BaseModel]) -> Any:
        try:
            data = json.loads(request.get_data(cache=False) or b"null")
        except ValueError:
            raise _RefusalError(400, "Invalid JSON", "the body is not JSON") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise _RefusalError(422, "Invalid request", detail) from None

    @app.post("/api/study/download")
    def download() -> Response:
        req: DownloadRequest = _body(DownloadRequest)
        try:
            accepted = downloads.submit(req, source="api")
        except WebhookRefused as exc:
            return _problem(422, "Webhook refused", str(exc))
        return _json(accepted, 202)

    @app.post("/api/study/report-status")
    def report_status() -> Response:
        req: ReportStatusRequest = _body(ReportStatusRequest)
        return _json(reports.answer(req))

    @app.get("/api/jobs/<job_id>")
    def job(job_id: str) -> Response:
        found = downloads.job(job_id)
        if found is None:
            return _problem(404, "No such job")
        return Response(json.dumps(found.as_dict()), mimetype="application/json")

    @app.errorhandler(_RefusalError)
    def _refused(exc: _RefusalError) -> Response:
        return _problem(exc.status, exc.title, exc.detail)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return _problem(exc.code or 500, exc.name, exc.description or "")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app


class _RefusalError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def tls_adapter(identity: NodeIdentity) -> BuiltinSSLAdapter:
    """TLS with the node's enrolment certificate (the hub's CA signed it)."""
    adapter = BuiltinSSLAdapter(str(identity.cert_path), str(identity.key_path))
    context: ssl.SSLContext = adapter.context
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return adapter
