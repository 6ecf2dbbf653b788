"""A study revision's lifecycle as data: its states, what moves it on, and nothing else.

    received   instances arriving; a new instance may still come
    complete   stable for the stable age (or the PACS's instance count reached): closed
    queued     a Medis code issued; waiting for the uplink
    uploading  registered with the hub, parts going up (resumed after a restart)
    delivered  the hub's signed receipt is stored
    purged     delivered, and the local copy removed after the retention time

`purged` is a phase of `delivered` (the state column stays `delivered`, `purged_at` is set):
what was delivered stays counted as delivered. The schema holds both rules as CHECK
constraints (`check_sql`), and every statement in store/index.py that reads or moves a state
is written with `where` and `move`, which refuse, when the module is imported, a state or a
move this table does not have. The table is read like health's STATES/CONDITIONS: a missing
transition shows here, not in a grep of the SQL.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    UPLOADING = "uploading"
    DELIVERED = "delivered"


PURGED = "purged"  # a phase of DELIVERED, kept as `purged_at`

# state -> {next state: what moves it there (and where)}
TRANSITIONS: dict[StudyState, dict[StudyState, str]] = {
    StudyState.RECEIVED: {
        StudyState.COMPLETE: "stable age passed or the PACS's count reached (store/completion.py)",
    },
    StudyState.COMPLETE: {
        StudyState.QUEUED: "a Medis code issued (uplink/worker.py: issue_codes)",
    },
    StudyState.QUEUED: {
        StudyState.UPLOADING: "registered with the hub (uplink/worker.py)",
        StudyState.DELIVERED: "the hub already held it: its receipt stored",
    },
    StudyState.UPLOADING: {
        StudyState.UPLOADING: "registered again (the hub forgot the upload)",
        StudyState.DELIVERED: "committed: the hub's receipt stored",
        StudyState.QUEUED: (
            "to be registered afresh under a new revision number: a file was lost before "
            "the hub held its part (uplink/lost.py)"
        ),
    },
    StudyState.DELIVERED: {},  # purged_at set by retention (uplink/worker.py: purge)
}

# The states a study waits in for the uplink (the queue the dashboard and health show).
WAITING_FOR_UPLINK = (StudyState.COMPLETE, StudyState.QUEUED, StudyState.UPLOADING)
UPLOADABLE = (StudyState.QUEUED, StudyState.UPLOADING)


def _literal(state: StudyState) -> str:
    return f"'{state.value}'"


def where(*states: StudyState, column: str = "state") -> str:
    """The SQL condition `state = 'x'` or `state IN ('x', 'y')` for these states."""
    if not states or not all(isinstance(s, StudyState) for s in states):
        raise ValueError(f"not study states: {states!r}")
    if len(states) == 1:
        return f"{column} = {_literal(states[0])}"
    return f"{column} IN ({', '.join(map(_literal, states))})"


def move(sources: tuple[StudyState, ...], target: StudyState) -> tuple[str, str]:
    """(`state = 'target'`, the condition on the current state) for an UPDATE that moves a
    study from any of `sources` to `target`; ValueError for a move the table lacks."""
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise ValueError(f"a study does not move from {source} to {target}")
    return f"state = {_literal(target)}", where(*sources)


def check_sql() -> str:
    """The CHECK constraints of the studies table: a known state; purged only if delivered."""
    known = where(*StudyState)
    return f"CHECK ({known}), CHECK (purged_at IS NULL OR {where(StudyState.DELIVERED)})"
