"""`HubError`: every refusal of the reference hub, carrying its HTTP status.

Its own module so that every part of the hub (nodes, uploads, files, physicians, ...) and the
Flask layer raise and answer the same error without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError


@dataclass
class HubError(Exception):
    """A refusal: HTTP status, a short title and a detail for the caller."""

    status: int
    title: str
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"


def validation_detail(exc: ValidationError) -> str:
    """A pydantic error as one line for a HubError's detail (its first ten problems)."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
