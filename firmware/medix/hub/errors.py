"""`HubError`: every refusal of the reference hub, carrying its HTTP status.

Its own module so that the hub's parts (core, physicians) raise the same error without
importing each other; medix.hub.core re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HubError(Exception):
    """A refusal: HTTP status, a short title and a detail for the caller."""

    status: int
    title: str
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"
