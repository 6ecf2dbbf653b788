"""Front ends: what serves people beside the engine, found by entry point, never imported.

The setup wizard and dashboard (`afra_web`, in web-setup/) build on the firmware; the
firmware must not import them. A front end names itself in the distribution's entry points,
group `afra.frontends` (pyproject.toml), as a callable taking the built `Appliance` and
returning a `Started`; `afra run` starts each one found when `web.enabled` is set. This is how
pytest finds its plugins and Flask its commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

LOG = logging.getLogger("afra")

GROUP = "afra.frontends"


@dataclass(frozen=True)
class Started:
    """A running front end: where people open it, and how it stops."""

    name: str
    port: int
    urls: list[str]
    stop: Callable[[], None]


def available() -> dict[str, Callable[[Any], Started]]:
    """The front ends installed with this distribution, by name."""
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}
