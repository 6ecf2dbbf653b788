"""The OpenAPI 3.1 document of Medix, generated from the message models.

`build_openapi()` covers every path of docs/medix.md: node -> hub under /medix/v1 (mutual
TLS), the node-side API (/api/study/download with its progress callback,
/api/study/report-status), the hub's webhook, the reference hub's pages (the patient page,
physicians' sign-in and inbox, downloads; a physician's session is a cookie) and its admin
API (bearer token). Schemas come from the pydantic models (medix.models, medix.hub.schemas);
errors are problem+json, except on the HTML pages. `python -m medix.openapi >
docs/medix-openapi.json` refreshes the committed copy, which a test compares with this
function's output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from medix import models
from medix.hub import schemas

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
JSON = "application/json"
HTML = "text/html"

MODELS: tuple[type[BaseModel], ...] = (
    models.Policy,
    models.EnrolRequest,
    models.EnrolResponse,
    models.Heartbeat,
    models.HeartbeatResponse,
    models.StudyRegistration,
    models.Registration,
    models.PartAck,
    models.CommitRequest,
    models.Receipt,
    models.FileRegistration,
    models.FileUpload,
    models.FileCommit,
    models.FileSaved,
    models.CommandBatch,
    models.CommandResult,
    models.DownloadRequest,
    models.DownloadAccepted,
    models.WebhookProgress,
    models.ReportStatusRequest,
    models.ReportStatusResponse,
    models.AuditBatch,
    models.AuditAck,
    models.Problem,
    *schemas.ADMIN_MODELS,
    # Physician accounts (admin): not in ADMIN_MODELS, which medix.hub.schemas owns.
    schemas.PhysicianOrder,
    schemas.PasswordOrder,
    schemas.PhysicianInfo,
    schemas.PhysicianList,
)

# Problem responses by status: (component name, description).
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "malformed request (not JSON, bad header or parameter)"),
    401: ("Unauthorized", "no client certificate / admin token, or one the hub does not know"),
    403: ("Forbidden", "refused (wrong, expired or used pairing code)"),
    404: ("NotFound", "no such resource (or not this node's)"),
    409: ("Conflict", "conflicts with the stored state (detail says how)"),
    410: ("Gone", "expired"),
    413: ("ContentTooLarge", "body (or decompressed part) over the limit"),
    415: ("UnsupportedMediaType", "wrong Content-Type or Content-Encoding"),
    422: ("UnprocessableContent", "valid JSON that breaks the model or the protocol's rules"),
    429: ("TooManyRequests", "too many wrong tries; see Retry-After"),
}
NODE_ERRORS = (400, 401, 413, 415, 422)
ADMIN: list[dict[str, list[str]]] = [{"adminBearer": []}]
MTLS: list[dict[str, list[str]]] = [{"mutualTLS": []}]
SESSION: list[dict[str, list[str]]] = [{"physicianSession": []}]
# medix.hub.app's cookies as named over TLS (plain http drops the __Host- prefix); written
# out, not imported: medix.hub.app needs Flask and this module does not.
SESSION_COOKIE = "__Host-medix-session"
FORM_COOKIE = "__Host-medix-form"
CSRF_FIELD = "csrf_token"
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "whole seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}

COMMANDS_DESCRIPTION = """Long poll: answers at once when commands are due, else after at most
`wait` seconds (0-60; larger values count as 60) with an empty batch. Returned commands are
marked delivered; one without a result after 5 minutes is delivered again (recognise repeats
by `id`). Command types and their `args`: `download` -> DownloadRequest, `report_status` ->
ReportStatusRequest, `locate` -> `{"seconds": n}`, `diagnostics` -> `{}`, `apply_policy` ->
Policy."""


PART_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
        }
    },
}


def _part_headers() -> list[dict[str, Any]]:
    return [
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": "identity when absent",
            "schema": {"type": "string", "enum": ["zstd", "identity"]},
        },
        {
            "name": "X-Medix-Part-SHA256",
            "in": "header",
            "required": True,
            "description": "SHA-256 (hex) of the uncompressed part",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    ]


def _signature_headers() -> list[dict[str, Any]]:
    return [
        {
            "name": models.NODE_HEADER,
            "in": "header",
            "required": False,
            "description": "the signing node's id (from enrolment)",
            "schema": {"type": "string"},
        },
        {
            "name": models.TIMESTAMP_HEADER,
            "in": "header",
            "required": False,
            "description": "Unix seconds when signed; accepted within 300 s of the hub's clock",
            "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
        },
        {
            "name": models.SIGNATURE_HEADER,
            "in": "header",
            "required": False,
            "description": "`sha256=` + hex HMAC-SHA256, keyed with EnrolResponse.webhook_key "
            "(base64-decoded), over the timestamp, a dot and the body as sent",
            "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
        },
    ]


class _Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def add(self, model: type[BaseModel]) -> dict[str, str]:
        """Put a model (and the models it uses) in components; return a $ref to it."""
        name = model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(ref_template=REF)
            for def_name, definition in schema.pop("$defs", {}).items():
                self._put(def_name, definition)
            self._put(name, schema)
        return {"$ref": REF.format(model=name)}

    def _put(self, name: str, schema: dict[str, Any]) -> None:
        if name in self.schemas and self.schemas[name] != schema:
            raise ValueError(f"two different schemas are both named {name}")
        self.schemas[name] = schema

    def json_body(self, model: type[BaseModel], description: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"required": True, "content": {JSON: {"schema": self.add(model)}}}
        if description:
            body["description"] = description
        return body

    def json_response(
        self, model: type[BaseModel], description: str, headers: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response: dict[str, Any] = {
            "description": description,
            "content": {JSON: {"schema": self.add(model)}},
        }
        if headers:
            response["headers"] = headers
        return response


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
        for status in sorted(set(statuses))
    }


def _path_param(name: str, description: str, schema: dict[str, Any] | None = None) -> Any:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _html(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {HTML: {"schema": {"type": "string"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _too_many(
    description: str = "rate limited: too many requests from this address",
) -> dict[str, Any]:
    """A page's 429: an empty bucket of medix.hub.throttle (docs/medix.md, Rate limits)."""
    return _html(description, RETRY_AFTER)


def _see_other(description: str, cookie: str = "") -> dict[str, Any]:
    headers: dict[str, Any] = {"Location": {"schema": {"type": "string"}}}
    if cookie:
        headers["Set-Cookie"] = {"description": cookie, "schema": {"type": "string"}}
    return {"description": description, "headers": headers}


def _form(fields: dict[str, str], *, required: bool = True) -> dict[str, Any]:
    """An HTML form's body: every field a string, described by `fields`."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": description}
            for name, description in fields.items()
        },
    }
    if required:
        schema["required"] = list(fields)
    return {
        "required": required,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


def _node_to_hub(b: _Builder) -> dict[str, Any]:
    prefix = models.API_PREFIX
    upload_id = _path_param("upload_id", "from the registration")
    tags = ["node to hub"]
    return {
        f"{prefix}/enrol": {
            "post": {
                "operationId": "enrol",
                "tags": tags,
                "summary": "Exchange a pairing code and a CSR for a client certificate",
                "description": "Needs no client certificate. The pairing code is single use "
                "and expires; 5 wrong codes per source address in 10 minutes -> 429.",
                "security": [],
                "requestBody": b.json_body(models.EnrolRequest),
                "responses": {
                    "200": b.json_response(models.EnrolResponse, "enrolled"),
                    **_errors(400, 403, 413, 415, 422, 429),
                },
            }
        },
        f"{prefix}/heartbeat": {
            "post": {
                "operationId": "heartbeat",
                "tags": tags,
                "summary": "Report health and queue; get a newer policy when there is one",
                "security": MTLS,
                "requestBody": b.json_body(models.Heartbeat),
                "responses": {
                    "200": b.json_response(models.HeartbeatResponse, "recorded"),
                    **_errors(*NODE_ERRORS),
                },
            }
        },
        f"{prefix}/audit": {
            "post": {
                "operationId": "postAudit",
                "tags": tags,
                "summary": "Hand over audit records (DICOM PS3.15 A.5 messages as JSON)",
                "description": "1-500 records in `seq` order, from the node's cursor; the hub "
                "keeps each (node, seq) once, so a batch sent again is harmless. The answer's "
                "`through` is the batch's last seq, now held; the node moves its cursor there "
                "and sends what follows. A gap in the seqs is the node's own doing (records it "
                "removed unsent; its trail records how many).",
                "security": MTLS,
                "requestBody": b.json_body(models.AuditBatch),
                "responses": {
                    "200": b.json_response(models.AuditAck, "held"),
                    **_errors(*NODE_ERRORS),
                },
            }
        },
        f"{prefix}/studies": {
            "post": {
                "operationId": "registerStudy",
                "tags": tags,
                "summary": "Register a study revision for upload (idempotent)",
                "description": "Key: (node, study_uid, revision). The same body again returns "
                "the same upload (200); a different body under the same key is 409. `parts` "
                "must be ceil(stream_size / part_size).",
                "security": MTLS,
                "requestBody": b.json_body(models.StudyRegistration),
                "responses": {
                    "201": b.json_response(
                        models.Registration,
                        "registered",
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                    "200": b.json_response(models.Registration, "already registered"),
                    **_errors(*NODE_ERRORS, 409),
                },
            }
        },
        f"{prefix}/uploads/{{upload_id}}": {
            "get": {
                "operationId": "getUpload",
                "tags": tags,
                "summary": "Which parts the hub holds (ask before resuming)",
                "security": MTLS,
                "parameters": [upload_id],
                "responses": {
                    "200": b.json_response(models.Registration, "the upload"),
                    **_errors(401, 404),
                },
            }
        },
        f"{prefix}/uploads/{{upload_id}}/parts/{{n}}": {
            "put": {
                "operationId": "putPart",
                "tags": tags,
                "summary": "Send part n of the upload stream (re-sending is harmless)",
                "description": "Every part is part_size bytes (uncompressed) except the last. "
                "A part decompressing beyond part_size is refused with 413 without being "
                "inflated; a hash or size mismatch is 422.",
                "security": MTLS,
                "parameters": [
                    upload_id,
                    _path_param("n", "part number, from 0", {"type": "integer", "minimum": 0}),
                    *_part_headers(),
                ],
                "requestBody": PART_BODY,
                "responses": {
                    "200": b.json_response(models.PartAck, "held"),
                    **_errors(*NODE_ERRORS, 404, 409),
                },
            }
        },
        f"{prefix}/uploads/{{upload_id}}/commit": {
            "post": {
                "operationId": "commitUpload",
                "tags": tags,
                "summary": "Check the stream against the manifest; answer a signed receipt",
                "description": "409 while parts are missing (detail lists them); 422 when an "
                "instance or the stream hashes differently from the manifest, or the manifest "
                "does not tile the stream. Repeating a commit returns the same receipt. The "
                "signature is ECDSA P-256 SHA-256 by the hub CA key over the canonical JSON "
                "(sorted keys, no whitespace) of the receipt's other fields, base64.",
                "security": MTLS,
                "parameters": [upload_id],
                "requestBody": b.json_body(models.CommitRequest),
                "responses": {
                    "200": b.json_response(models.Receipt, "committed"),
                    **_errors(*NODE_ERRORS, 404, 409),
                },
            }
        },
        **_files(b),
        f"{prefix}/commands": {
            "get": {
                "operationId": "pollCommands",
                "tags": tags,
                "summary": "Long poll for commands from the hub",
                "description": COMMANDS_DESCRIPTION,
                "security": MTLS,
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    }
                ],
                "responses": {
                    "200": b.json_response(models.CommandBatch, "due commands, maybe none"),
                    **_errors(400, 401),
                },
            }
        },
        f"{prefix}/updates/{{sha256}}": {
            "get": {
                "operationId": "getUpdate",
                "tags": tags,
                "summary": "A system update bundle the policy offers (byte ranges resume it)",
                "description": (
                    "The RAUC bundle named by policy.update.sha256. The node checks the hash, "
                    "then the signature against the key in its own image, the compatible "
                    "string and the version, before it installs anything."
                ),
                "security": MTLS,
                "parameters": [
                    _path_param("sha256", "the bundle's SHA-256", {"type": "string"}),
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "bytes=N- to resume a cut download",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the bundle",
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            }
                        },
                    },
                    "206": {"description": "the rest of the bundle, from the range asked"},
                    **_errors(*NODE_ERRORS, 404),
                },
            }
        },
        f"{prefix}/commands/{{id}}/result": {
            "post": {
                "operationId": "commandResult",
                "tags": tags,
                "summary": "Post a command's result (a repeat keeps the first)",
                "security": MTLS,
                "parameters": [_path_param("id", "command id")],
                "requestBody": b.json_body(models.CommandResult),
                "responses": {"204": {"description": "stored"}, **_errors(*NODE_ERRORS, 404)},
            }
        },
    }


def _files(b: _Builder) -> dict[str, Any]:
    prefix = models.API_PREFIX
    file_id = _path_param("file_id", "from the registration")
    tags = ["node to hub"]
    return {
        f"{prefix}/files": {
            "post": {
                "operationId": "registerFile",
                "tags": tags,
                "summary": "Register a file prepared for a hub user (a study zip; idempotent)",
                "description": "Key: (node, job_id). The same body again returns the same "
                "file (200); a different name, media type or part size under the same job is "
                "409. The size is given only at commit.",
                "security": MTLS,
                "requestBody": b.json_body(models.FileRegistration),
                "responses": {
                    "201": b.json_response(
                        models.FileUpload,
                        "registered",
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                    "200": b.json_response(models.FileUpload, "already registered"),
                    **_errors(*NODE_ERRORS, 409),
                },
            }
        },
        f"{prefix}/files/{{file_id}}": {
            "get": {
                "operationId": "getFile",
                "tags": tags,
                "summary": "Which parts the hub holds, or the saved file",
                "security": MTLS,
                "parameters": [file_id],
                "responses": {
                    "200": b.json_response(models.FileUpload, "the file"),
                    **_errors(401, 404),
                },
            }
        },
        f"{prefix}/files/{{file_id}}/parts/{{n}}": {
            "put": {
                "operationId": "putFilePart",
                "tags": tags,
                "summary": "Send part n of the file (re-sending is harmless)",
                "description": "At most part_size bytes uncompressed (422 beyond, without "
                "inflating further); a hash mismatch is 422; 409 once the file is saved. "
                "Part sizes are checked at commit.",
                "security": MTLS,
                "parameters": [
                    file_id,
                    _path_param("n", "part number, from 0", {"type": "integer", "minimum": 0}),
                    *_part_headers(),
                ],
                "requestBody": PART_BODY,
                "responses": {
                    "200": b.json_response(models.PartAck, "held"),
                    **_errors(*NODE_ERRORS, 404, 409),
                },
            }
        },
        f"{prefix}/files/{{file_id}}/commit": {
            "post": {
                "operationId": "commitFile",
                "tags": tags,
                "summary": "Assemble parts 0..parts-1 and keep the file; answer where it is",
                "description": "409 while parts are missing (detail lists them); 422 when "
                "parts is not ceil(size / part_size), a part but the last is not part_size "
                "bytes, the parts do not add up to size, or the assembled file's SHA-256 "
                "differs. Repeating the commit returns the same FileSaved; a different commit "
                "of a saved file is 409.",
                "security": MTLS,
                "parameters": [file_id],
                "requestBody": b.json_body(models.FileCommit),
                "responses": {
                    "200": b.json_response(models.FileSaved, "saved"),
                    **_errors(*NODE_ERRORS, 404, 409),
                },
            }
        },
    }


def _node_side(b: _Builder) -> dict[str, Any]:
    servers = [
        {
            "url": "https://{node}",
            "description": "the node, for a hub that can reach it (else: commands)",
            "variables": {"node": {"default": "node.example"}},
        }
    ]
    tags = ["node-side API"]
    progress = {
        "{$request.body#/WebhookUri}": {
            "post": {
                "summary": "Progress of the download, at each step",
                "requestBody": b.json_body(models.WebhookProgress),
                "responses": {"204": {"description": "recorded"}},
            }
        }
    }
    return {
        "/api/study/download": {
            "servers": servers,
            "post": {
                "operationId": "studyDownload",
                "tags": tags,
                "summary": "Prepare studies for the hub; progress goes to WebhookUri",
                "description": "Status order: RequestSent (or RequestFailed) -> ExportStarted "
                "(or ExportFailed) -> CompressStarted -> CompressFinished -> ExportCompleted -> "
                "DownloadStarted (or DownloadFailed) -> DownloadSaved; MergeStarted / "
                "MergeCompleted / MergeFailed when several studies are asked for together. "
                "`Status` is the DownloadStatus number as a string. Authentication: "
                "`Authorization: Bearer <node_api_token>` from enrolment; TLS with the node's "
                "certificate (DNS name = node id). Progress posts carry X-Medix-Node, "
                "X-Medix-Timestamp and X-Medix-Signature when the hub gave a webhook key.",
                "requestBody": b.json_body(models.DownloadRequest),
                "callbacks": {"progress": progress},
                "responses": {
                    "202": b.json_response(models.DownloadAccepted, "accepted"),
                    **_errors(400, 401, 422),
                },
            },
        },
        "/api/study/report-status": {
            "servers": servers,
            "post": {
                "operationId": "studyReportStatus",
                "tags": tags,
                "summary": "Whether each study has a report",
                "requestBody": b.json_body(models.ReportStatusRequest),
                "responses": {
                    "200": b.json_response(models.ReportStatusResponse, "per study"),
                    **_errors(400, 401, 422),
                },
            },
        },
        "/api/jobs/{job_id}": {
            "servers": servers,
            "get": {
                "operationId": "downloadJob",
                "tags": tags,
                "summary": "A download job and its timeline (status, name, time, detail)",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "the job",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(401, 404),
                },
            },
        },
    }


def _hub_pages(b: _Builder) -> dict[str, Any]:
    tags = ["hub pages"]
    return {
        "/webhook/v1/pacs/{vendor}": {
            "post": {
                "operationId": "webhookProgress",
                "tags": ["webhook"],
                "summary": "Record a node's download progress (seed format)",
                "description": "Unsigned posts are recorded as unverified. A signed post "
                "(all three X-Medix headers) must verify, else 401 and nothing is recorded. "
                "While fail-next is armed the post is recorded as a failed attempt and answered "
                "with the injected status.",
                "parameters": [
                    _path_param("vendor", "the PACS vendor's name in the hub"),
                    *_signature_headers(),
                ],
                "requestBody": b.json_body(models.WebhookProgress),
                "responses": {
                    "204": {"description": "recorded with its headers and time"},
                    **_errors(400, 401, 404, 413, 415, 422),
                    "5XX": {
                        "description": "a failure injected by /admin/webhooks/fail-next",
                        "content": {PROBLEM: {"schema": {"$ref": REF.format(model="Problem")}}},
                    },
                },
            }
        },
        "/webhook/v1/redirect": {
            "post": {
                "operationId": "webhookRedirect",
                "tags": ["webhook"],
                "summary": "Test target: redirects to the cloud metadata address",
                "description": "Answers 302 to http://169.254.169.254/latest/meta-data/ (also "
                "for GET and PUT); a node must not follow it.",
                "responses": {
                    "302": {
                        "description": "redirect, never to be followed",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/files/{file_id}/{name}": {
            "get": {
                "operationId": "downloadFile",
                "tags": tags,
                "summary": "A file a node prepared (FileSaved.url; the webhook's File)",
                "description": "A capability URL: the file id is 192 random bits; no other "
                "credential is asked for.",
                "parameters": [
                    _path_param("file_id", "FileSaved.file_id"),
                    _path_param("name", "FileRegistration.name"),
                ],
                "responses": {
                    "200": {
                        "description": "the file, as an attachment",
                        "content": {
                            "application/zip": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/zip",
                                }
                            }
                        },
                    },
                    "404": _html("no such file (counted as a wrong guess)"),
                    "410": _html("the hub no longer holds it"),
                    "429": _too_many("rate limited, or too many wrong links from this address"),
                },
            }
        },
        "/patient": {
            "get": {
                "operationId": "patientForm",
                "tags": tags,
                "summary": "Form: Medis code and birth date",
                "responses": {"200": _html("the form"), "429": _too_many()},
            },
            "post": {
                "operationId": "patientOpen",
                "tags": tags,
                "summary": "The study behind a Medis code, when the birth date matches",
                "description": "Codes are read case-insensitively, with or without "
                "separators. Wrong tries are limited per code and per address "
                "(Policy.code_max_attempts per day, then 429) and count against the "
                "address's wrong guesses (medix.hub.throttle); codes expire after "
                "Policy.code_expiry_days (410).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["code", "birth_date"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "birth_date": {
                                        "type": "string",
                                        "description": "YYYY-MM-DD or YYYYMMDD",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _html("the study, with a download link"),
                    "400": _html("code or birth date missing"),
                    "403": _html("wrong code or birth date (counted)"),
                    "410": _html("code expired"),
                    "429": _too_many(
                        "rate limited, no wrong guesses left for this address, or locked "
                        "after Policy.code_max_attempts wrong tries a day"
                    ),
                },
            },
        },
        "/download/{token}": {
            "get": {
                "operationId": "downloadStudy",
                "tags": tags,
                "summary": "Zip of a study's DICOM files (link from /patient or /inbox)",
                "parameters": [_path_param("token", "signed, expires after an hour")],
                "responses": {
                    "200": {
                        "description": "the zip",
                        "content": {
                            "application/zip": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/zip",
                                }
                            }
                        },
                    },
                    "404": _html("no such link or study (counted as a wrong guess)"),
                    "410": _html("link expired"),
                    "429": _too_many("rate limited, or too many wrong links from this address"),
                },
            }
        },
        **_physician_pages(),
    }


def _physician_pages() -> dict[str, Any]:
    """Sign-in, sign-out and the inbox (docs/medix.md, Physician accounts and sessions)."""
    tags = ["hub pages"]
    form_cookie = (
        f"{FORM_COOKIE} (medix-form over plain http): the form's nonce, HttpOnly, SameSite=Strict"
    )
    session_cookie = (
        f"{SESSION_COOKIE} (medix-session over plain http): the session's 256-bit token, "
        "HttpOnly, SameSite=Strict, Path=/, no expiry date"
    )
    refused_form = "the form again, with a fresh CSRF token"
    return {
        "/physician/sign-in": {
            "get": {
                "operationId": "physicianSignInForm",
                "tags": tags,
                "summary": "Form: login and password (with a CSRF token)",
                "responses": {
                    "200": _html(
                        "the form",
                        {"Set-Cookie": {"description": form_cookie, "schema": {"type": "string"}}},
                    ),
                    "429": _too_many(),
                },
            },
            "post": {
                "operationId": "physicianSignIn",
                "tags": tags,
                "summary": "Sign in: a session cookie and a redirect to /inbox",
                "description": "The form's `csrf_token` must be the hub's HMAC of the nonce "
                "in the form cookie (set by the GET); without both the post is 400 and no "
                "password is checked. A wrong login and a wrong password are the same 403 "
                "and count as wrong guesses per address and per login; while either has none "
                "left the post is 429 and the password is not checked. A session ends on "
                "sign-out, a new password, removal of the account, 30 minutes without a "
                "request or 12 hours after sign-in; signing in again ends the browser's "
                "previous session.",
                "parameters": [
                    {
                        "name": FORM_COOKIE,
                        "in": "cookie",
                        "required": False,
                        "description": "the nonce the form's GET set (medix-form over plain "
                        "http); without it the post is 400",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _form(
                    {
                        "login": "what the physician types (case-insensitive)",
                        "password": "the account's password",
                        CSRF_FIELD: "the token the form carries",
                    }
                ),
                "responses": {
                    "303": _see_other(
                        "signed in: to /inbox",
                        f"{session_cookie}; the form cookie is cleared",
                    ),
                    "400": _html(f"the form was not this hub's: {refused_form}"),
                    "403": _html(f"wrong login or password (not saying which): {refused_form}"),
                    "429": _too_many(
                        "rate limited, or no wrong sign-ins left for this address or this "
                        "login (the password was not checked)"
                    ),
                },
            },
        },
        "/physician/sign-out": {
            "post": {
                "operationId": "physicianSignOut",
                "tags": tags,
                "summary": "End the session (the hub deletes it) and drop its cookie",
                "description": "The form on the inbox page carries `csrf_token`, an HMAC of "
                "the session; without a live session there is nothing to end and the answer "
                "is the same redirect.",
                "security": [*SESSION, {}],
                "requestBody": _form({CSRF_FIELD: "the token the inbox page's form carries"}),
                "responses": {
                    "303": _see_other(
                        "signed out: to /physician/sign-in", "the session cookie, cleared"
                    ),
                    "400": _html("a CSRF token not of this session; the session stays"),
                    "429": _too_many(),
                },
            }
        },
        "/inbox": {
            "get": {
                "operationId": "physicianInbox",
                "tags": tags,
                "summary": "The signed-in physician's studies with Medis codes and downloads",
                "description": "The studies whose StudyRegistration.referring_physician "
                "matches the account's name (DICOM PN text, trimmed and case-folded: "
                "PhysicianInfo.physician_key). Download links are signed, valid for an hour "
                "and not tied to the session.",
                "security": SESSION,
                "responses": {
                    "200": _html("the studies (maybe none) and a sign-out form"),
                    "303": _see_other("no live session: to /physician/sign-in"),
                    "429": _too_many(),
                },
            }
        },
        "/inbox/{name}": {
            "get": {
                "operationId": "oldPhysicianInbox",
                "tags": tags,
                "summary": "The old per-name address: a redirect to /inbox",
                "description": "The name is ignored; a URL never chooses whose studies are shown.",
                "deprecated": True,
                "parameters": [_path_param("name", "anything; ignored")],
                "responses": {"303": _see_other("to /inbox"), "429": _too_many()},
            }
        },
    }


def _admin(b: _Builder) -> dict[str, Any]:
    tags = ["admin"]
    node_id = _path_param("node_id", "node id from enrolment")
    login = _path_param("login", "PhysicianInfo.login (case-insensitive)")

    def op(
        operation_id: str,
        summary: str,
        ok: tuple[str, dict[str, Any]],
        *,
        body: type[BaseModel] | None = None,
        errors: tuple[int, ...] = (),
        parameters: list[Any] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": tags,
            "summary": summary,
            "security": ADMIN,
            "responses": {ok[0]: ok[1], **_errors(401, *errors)},
        }
        if description:
            operation["description"] = description
        if body is not None:
            operation["requestBody"] = b.json_body(body)
        if parameters:
            operation["parameters"] = parameters
        return operation

    return {
        "/admin/pairing-codes": {
            "post": op(
                "newPairingCode",
                "A fresh one-time pairing code",
                ("201", b.json_response(schemas.PairingCode, "made")),
            )
        },
        "/admin/policy": {
            "get": op(
                "getPolicy", "The current policy", ("200", b.json_response(models.Policy, "it"))
            ),
            "post": op(
                "publishPolicy",
                "Publish a policy; its version must be above the current one",
                ("200", b.json_response(models.Policy, "published")),
                body=models.Policy,
                errors=(400, 409, 413, 415, 422),
            ),
        },
        "/admin/nodes": {
            "get": op("listNodes", "Enrolled nodes", ("200", b.json_response(schemas.NodeList, "")))
        },
        "/admin/updates": {
            "put": {
                **op(
                    "addUpdate",
                    "Store a system update bundle; the offer to put into a policy",
                    ("201", b.json_response(models.UpdateOffer, "stored")),
                    errors=(400, 413),
                    parameters=[
                        {
                            "name": "version",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "compatible",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "publish",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["1", "true", "yes"]},
                            "description": "also publish a new policy version offering it",
                        },
                    ],
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        }
                    },
                },
            }
        },
        "/admin/nodes/{node_id}/commands": {
            "post": op(
                "queueCommand",
                "Queue a command for a node (args checked against the type)",
                ("201", b.json_response(schemas.CommandQueued, "queued")),
                body=schemas.CommandOrder,
                errors=(400, 404, 413, 415, 422),
                parameters=[node_id],
            ),
            "get": op(
                "listCommands",
                "A node's commands with their results",
                ("200", b.json_response(schemas.CommandList, "")),
                errors=(404,),
                parameters=[node_id],
            ),
        },
        "/admin/nodes/{node_id}/revoke": {
            "post": op(
                "revokeNode",
                "Revoke a node: its certificate gets 401 from now on",
                ("204", {"description": "revoked"}),
                errors=(404,),
                parameters=[node_id],
            )
        },
        "/admin/studies": {
            "get": op(
                "listStudies",
                "Uploads with Medis codes, counts and receipts",
                ("200", b.json_response(schemas.StudyList, "")),
            )
        },
        "/admin/studies/{upload_id}/instances/{sop_instance_uid}": {
            "get": op(
                "getInstance",
                "The stored bytes of one instance (Part 10, as the node sent it)",
                (
                    "200",
                    {
                        "description": "the instance",
                        "content": {
                            "application/dicom": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/dicom",
                                }
                            }
                        },
                    },
                ),
                errors=(404,),
                parameters=[
                    _path_param("upload_id", "upload id"),
                    _path_param("sop_instance_uid", "SOP Instance UID"),
                ],
            )
        },
        "/admin/webhooks": {
            "get": op(
                "listWebhooks",
                "The webhook log (with signature verdicts and failed attempts)",
                ("200", b.json_response(schemas.WebhookList, "")),
            )
        },
        "/admin/webhooks/fail-next": {
            "post": op(
                "failNextWebhooks",
                "Fault injection: answer the next `count` webhook posts with `status`",
                ("200", b.json_response(schemas.WebhookFailNext, "armed (count 0: disarmed)")),
                body=schemas.WebhookFailNext,
                errors=(400, 413, 415, 422),
            )
        },
        "/admin/files": {
            "get": op(
                "listFiles",
                "Files nodes registered for the hub's users, open and saved",
                ("200", b.json_response(schemas.FileList, "")),
            )
        },
        "/admin/audit": {
            "get": op(
                "listAudit",
                "Audit records the nodes handed over (POST /medix/v1/audit)",
                ("200", b.json_response(schemas.AuditList, "at most 1000, oldest first")),
                parameters=[
                    {
                        "name": "node",
                        "in": "query",
                        "required": False,
                        "description": "one node's records, by seq (an unknown id: none)",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/admin/physicians": {
            "post": op(
                "addPhysician",
                "Make a referring physician's account (there is no sign-up)",
                (
                    "201",
                    b.json_response(
                        schemas.PhysicianInfo,
                        "made",
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                ),
                body=schemas.PhysicianOrder,
                errors=(400, 409, 413, 415, 422),
                description="`login`: 1-64 of a-z 0-9 . _ @ -, starting with a letter or "
                "digit, case-insensitive (409 when taken). `name`: exactly as the nodes send "
                "StudyRegistration.referring_physician (DICOM PN text). `password`: "
                f"{schemas.MIN_PASSWORD_CHARS}-{schemas.MAX_PASSWORD_CHARS} characters, not the "
                "login; kept only as an scrypt hash, never shown.",
            ),
            "get": op(
                "listPhysicians",
                "Physician accounts",
                ("200", b.json_response(schemas.PhysicianList, "")),
            ),
        },
        "/admin/physicians/{login}": {
            "get": op(
                "getPhysician",
                "A physician account",
                ("200", b.json_response(schemas.PhysicianInfo, "")),
                errors=(404,),
                parameters=[login],
            ),
            "delete": op(
                "removePhysician",
                "Remove a physician account; its sessions end",
                ("204", {"description": "removed"}),
                errors=(404,),
                parameters=[login],
            ),
        },
        "/admin/physicians/{login}/password": {
            "put": op(
                "setPhysicianPassword",
                "Set a physician's password; the account's sessions end",
                ("200", b.json_response(schemas.PhysicianInfo, "set")),
                body=schemas.PasswordOrder,
                errors=(400, 404, 413, 415, 422),
                parameters=[login],
                description=f"{schemas.MIN_PASSWORD_CHARS}-{schemas.MAX_PASSWORD_CHARS} "
                "characters, not the login (422).",
            )
        },
    }


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a JSON-ready dict."""
    b = _Builder()
    paths = {**_node_to_hub(b), **_node_side(b), **_hub_pages(b), **_admin(b)}
    for model in MODELS:
        b.add(model)
    b.schemas["DownloadStatus"] = {
        "title": "DownloadStatus",
        "description": "Download progress numbers (WebhookProgress.Status carries them as "
        "strings); 9 is unused.",
        "type": "integer",
        "enum": [status.value for status in models.DownloadStatus],
        "x-enum-varnames": [status.name for status in models.DownloadStatus],
    }
    problem_ref = {"$ref": REF.format(model="Problem")}
    responses = {
        name: {"description": description, "content": {PROBLEM: {"schema": problem_ref}}}
        for name, description in ERRORS.values()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Medix",
            "version": models.PROTOCOL_VERSION,
            "summary": "Between an imaging center's node (AFRA) and a hub",
            "description": "Generated from medix.models by `python -m medix.openapi`; the "
            "prose is docs/medix.md. Node -> hub paths are under "
            f"{models.API_PREFIX} and need the client certificate the hub issued at "
            "enrolment. Errors are application/problem+json.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [
            {
                "url": "https://{hub}",
                "description": "the hub",
                "variables": {"hub": {"default": "127.0.0.1:8443"}},
            }
        ],
        "tags": [
            {"name": "node to hub", "description": "called by the node, mutual TLS"},
            {"name": "node-side API", "description": "served by the node (seed)"},
            {"name": "webhook", "description": "download progress, node -> hub"},
            {"name": "hub pages", "description": "the reference hub's HTML pages"},
            {"name": "admin", "description": "the reference hub's operator API"},
        ],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(b.schemas.items())),
            "responses": responses,
            "securitySchemes": {
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "the client certificate the hub signed at enrolment; the "
                    "hub names the node by the certificate's SHA-256 fingerprint",
                },
                "adminBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the reference hub's admin token",
                },
                "physicianSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "a referring physician's session from POST "
                    "/physician/sign-in (medix-session over plain http); HttpOnly, "
                    "SameSite=Strict; the hub keeps only its SHA-256",
                },
            },
        },
    }


def render_openapi() -> str:
    """The document as committed in docs/medix-openapi.json (sorted keys, indent 2)."""
    return json.dumps(build_openapi(), sort_keys=True, indent=2) + "\n"


def main() -> int:
    sys.stdout.write(render_openapi())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
