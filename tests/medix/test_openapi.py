"""docs/medix-openapi.json is what medix.openapi generates, and a valid OpenAPI 3.1 document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import openapi_spec_validator

from medix.openapi import build_openapi, render_openapi

DOC = Path(__file__).resolve().parents[2] / "docs" / "medix-openapi.json"
MEDIX_MD = DOC.with_name("medix.md")


def test_committed_document_is_current() -> None:
    assert DOC.read_text() == render_openapi(), (
        "docs/medix-openapi.json is stale: run python -m medix.openapi > docs/medix-openapi.json"
    )


def test_document_validates() -> None:
    openapi_spec_validator.validate(build_openapi())


def test_every_documented_path_is_described() -> None:
    paths = build_openapi()["paths"]
    # Parameter names differ between the prose ({id}) and the table ({upload_id}).
    shapes = {re.sub(r"\{[^}]+\}", "{}", path) for path in paths}
    text = MEDIX_MD.read_text()
    documented = re.findall(r"`(?:GET|POST|PUT) (/[^`?]+)", text)
    assert documented, "the path table in docs/medix.md moved"
    for path in documented:
        shape = re.sub(r"\{[^}]+\}", "{}", path)
        assert "/medix/v1" + shape in shapes or shape in shapes, path
    for path in ("/api/study/download", "/api/study/report-status", "/webhook/v1/pacs/{vendor}"):
        assert path in paths
    assert "callbacks" in paths["/api/study/download"]["post"]


def test_schemas_come_from_the_models() -> None:
    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    for name in ("EnrolRequest", "StudyRegistration", "Receipt", "Problem", "ManifestEntry"):
        assert name in schemas
    text = json.dumps(doc)
    assert "$defs" not in text
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text):
        assert ref in schemas, ref
    security = doc["components"]["securitySchemes"]
    assert security["mutualTLS"]["type"] == "mutualTLS"
    assert security["adminBearer"]["scheme"] == "bearer"
    heartbeat = doc["paths"]["/medix/v1/heartbeat"]["post"]
    assert heartbeat["security"] == [{"mutualTLS": []}]
    assert doc["components"]["responses"]["Unauthorized"]["content"]["application/problem+json"]
