"""The health model as data: the states a box can be in, their ranks, and the conditions.

Each condition names the state it puts the box in; when several conditions are active the
highest-ranked state wins (`afra.health.state.Health` resolves it). This module owns the
tables and nothing that moves: adding a condition or a state is an edit here, and the panel
file (`afra.panel.layout`) is checked against STATES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from afra.errors import AfraError


@dataclass(frozen=True)
class State:
    name: str
    rank: int  # several active conditions: the highest rank wins
    summary: str


@dataclass(frozen=True)
class Condition:
    name: str
    state: str
    text: str  # what a technician reads when no detail is given


HEALTHY = "healthy"

STATES: dict[str, State] = {
    s.name: s
    for s in (
        State(HEALTHY, 0, "working normally"),
        State("degraded", 10, "working, but something needs attention"),
        State("unclaimed", 20, "waiting for setup"),
        State("setup_open", 30, "setup window open"),
        State("booting", 40, "starting"),
        State("failed", 50, "not working: needs a technician"),
        State("updating", 60, "installing an update: do not unplug"),
        State("locating", 70, "showing the locate pattern"),
    )
}

CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("booting", "booting", "the appliance is starting"),
        Condition("unclaimed", "unclaimed", "not enrolled with a Medix hub yet"),
        Condition("setup_open", "setup_open", "the setup window is open"),
        Condition("updating", "updating", "an update is being installed"),
        Condition("locating", "locating", "someone asked the box to show where it is"),
        Condition("hub_unreachable", "degraded", "the hub cannot be reached"),
        Condition("queue_stale", "degraded", "the oldest undelivered study is too old"),
        Condition("disk_warning", "degraded", "the storage device is nearly full"),
        Condition("pacs_unreachable", "degraded", "the PACS does not answer C-ECHO"),
        Condition("cert_expiring", "degraded", "the node certificate expires soon"),
        Condition(
            "files_need_review",
            "degraded",
            "stored files need review (see the diagnostics bundle): send their studies again",
        ),
        Condition("disk_floor", "failed", "free space is below the floor: new studies refused"),
        Condition("storage_unwritable", "failed", "the storage device cannot be written"),
        Condition("cert_expired", "failed", "the node certificate has expired"),
    )
}

assert all(c.state in STATES for c in CONDITIONS.values())


class UnknownCondition(AfraError, ValueError):
    """A condition name the health model does not define."""


class Reason(NamedTuple):
    condition: str
    state: str
    detail: str
    source: str
    since: float  # wall-clock time the condition became active
