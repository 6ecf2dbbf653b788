"""What the node really sends, and what the hub really answers, match docs/medix-openapi.json.

The hub records every JSON body of a real delivery (Flask request hooks on the running
reference hub); each is validated against the OpenAPI document's schema for its path,
method and status. The models are shared, so this catches a document that drifted from them
and any hand-made body on either side.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flask import request
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from medix.hub.server import HubServer
from tests.fakes import FakeClock
from tests.uplink.conftest import BoxFactory, complete_and_deliver, send_study

DOC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "medix-openapi.json").read_text())
REGISTRY: Registry = Registry().with_resource(
    "urn:medix", Resource.from_contents(DOC, default_specification=DRAFT202012)
)


def operation(path: str, method: str) -> dict[str, Any]:
    for template, item in DOC["paths"].items():
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method in item:
            return dict(item[method])
    raise AssertionError(f"{method.upper()} {path} is not in the OpenAPI document")


def check(schema: dict[str, Any], body: Any, what: str) -> None:
    ref = schema.get("$ref", "")
    root = {"$ref": "urn:medix" + ref} if ref else schema
    errors = list(Draft202012Validator(root, registry=REGISTRY).iter_errors(body))
    assert not errors, f"{what}: {errors[0].message}"


def test_real_traffic_matches_the_document(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    seen: list[tuple[str, str, Any, int, Any]] = []
    app = hub.app

    @app.after_request
    def record(response: Any) -> Any:
        if request.path.startswith("/medix/v1/") and response.mimetype.endswith("json"):
            sent = request.get_json(silent=True) if request.is_json else None
            seen.append(
                (
                    request.path,
                    request.method.lower(),
                    sent,
                    response.status_code,
                    response.get_json(silent=True),
                )
            )
        return response

    box = enrolled_box(hub)
    box.uplink.heartbeat()
    files = send_study(box, tmp_path, "OAS", n=4)
    complete_and_deliver(box, clock, files)
    kinds = {(path.split("/")[3], method) for path, method, *_ in seen}
    assert {
        ("heartbeat", "post"),
        ("studies", "post"),
        ("uploads", "put"),
        ("uploads", "post"),
    } <= kinds
    for path, method, sent, status, answer in seen:
        op = operation(path, method)
        if sent is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            check(schema, sent, f"request {method.upper()} {path}")
        response = op["responses"].get(str(status))
        assert response is not None, f"{method.upper()} {path} answered {status}, not documented"
        content = response.get("content", {})
        media = content.get("application/json") or content.get("application/problem+json")
        if media is not None and answer is not None:
            check(media["schema"], answer, f"response {status} to {method.upper()} {path}")
