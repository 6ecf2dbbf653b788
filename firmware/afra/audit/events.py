"""What the box audits, as DICOM audit messages (PS3.15 A.5): the codes and the builders.

Each builder returns an `AuditEvent` without its sequence number (the trail gives it). The
codes are DICOM's (PS3.16 CID 400-405, "DCM") and RFC 3881's where DICOM uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from medix.models import AuditCode, AuditEvent, AuditObject, AuditParticipant

# Event IDs (CID 400)
APPLICATION_ACTIVITY = AuditCode(code="110100", meaning="Application Activity")
INSTANCES_TRANSFERRED = AuditCode(code="110104", meaning="DICOM Instances Transferred")
EXPORT = AuditCode(code="110106", meaning="Export")
IMPORT = AuditCode(code="110107", meaning="Import")
PATIENT_RECORD = AuditCode(code="110110", meaning="Patient Record")
QUERY = AuditCode(code="110112", meaning="Query")
SECURITY_ALERT = AuditCode(code="110113", meaning="Security Alert")
USER_AUTHENTICATION = AuditCode(code="110114", meaning="User Authentication")

# Event type codes (CID 401, 402)
APPLICATION_START = AuditCode(code="110120", meaning="Application Start")
APPLICATION_STOP = AuditCode(code="110121", meaning="Application Stop")
LOGIN = AuditCode(code="110122", meaning="Login")
LOGOUT = AuditCode(code="110123", meaning="Logout")
NETWORK_CONFIGURATION = AuditCode(code="110128", meaning="Network Configuration")
SECURITY_CONFIGURATION = AuditCode(code="110129", meaning="Security Configuration")
SOFTWARE_CONFIGURATION = AuditCode(code="110131", meaning="Software Configuration")
AUDIT_RECORDING_STOPPED = AuditCode(code="110139", meaning="Audit Recording Stopped")
AUDIT_LOG_USED = AuditCode(code="110101", meaning="Audit Log Used")

# Roles (CID 402)
SOURCE = AuditCode(code="110153", meaning="Source Role ID")
DESTINATION = AuditCode(code="110152", meaning="Destination Role ID")
APPLICATION = AuditCode(code="110150", meaning="Application")
APPLICATION_LAUNCHER = AuditCode(code="110151", meaning="Application Launcher")

# Participant object ID types (CID 404; RFC 3881)
STUDY_UID = AuditCode(code="110180", meaning="Study Instance UID")
PATIENT_NUMBER = AuditCode(code="2", system="RFC-3881", meaning="Patient Number")
NODE_ID = AuditCode(code="110182", meaning="Node ID")

# Outcomes (EventOutcomeIndicator)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


@dataclass(frozen=True)
class Actor:
    """Who acted: a person on the web app, a DICOM AE, the hub, the box itself."""

    user_id: str
    address: str = ""
    name: str = ""


@dataclass(frozen=True)
class StudyRef:
    """A study as the audit names it: by UID, with its patient."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    instances: int = 0


def _at(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


def _objects(studies: Iterable[StudyRef], **details: str) -> tuple[AuditObject, ...]:
    objects: list[AuditObject] = []
    patients: dict[str, str] = {}
    for s in studies:
        extra = {k: v for k, v in details.items() if v}
        if s.instances:
            extra["instances"] = str(s.instances)
        objects.append(AuditObject(id=s.study_uid, id_type=STUDY_UID, details=extra))
        if s.patient_id or s.patient_name:
            patients.setdefault(s.patient_id, s.patient_name)
    for patient_id, name in patients.items():
        objects.append(
            AuditObject(
                id=patient_id or "(none)", type=1, role=1, id_type=PATIENT_NUMBER, name=name
            )
        )
    return tuple(objects)


class Events:
    """Builds the box's audit records; `source` is the box (AuditSourceID), or a function
    giving it (the box id is known once the box has started)."""

    def __init__(self, source: str | Callable[[], str]) -> None:
        self._source = source

    @property
    def source(self) -> str:
        return self._source if isinstance(self._source, str) else self._source()

    def _box(self, role: AuditCode | None = None, *, requestor: bool = False) -> AuditParticipant:
        return AuditParticipant(user_id=self.source, requestor=requestor, role=role)

    def _event(
        self,
        when: float,
        event: AuditCode,
        action: str,
        participants: Iterable[AuditParticipant],
        *,
        outcome: int = SUCCESS,
        outcome_text: str = "",
        types: tuple[AuditCode, ...] = (),
        objects: tuple[AuditObject, ...] = (),
    ) -> AuditEvent:
        return AuditEvent.model_validate(
            {
                "seq": 1,  # given by the trail
                "event": event,
                "action": action,
                "at": _at(when),
                "outcome": outcome,
                "outcome_text": outcome_text[:500],
                "types": types,
                "source": self.source,
                "participants": tuple(participants),
                "objects": objects,
            }
        )

    @staticmethod
    def _person(actor: Actor, role: AuditCode | None = None) -> AuditParticipant:
        return AuditParticipant(
            user_id=actor.user_id[:256] or "(unknown)",
            name=actor.name[:256],
            requestor=True,
            address=actor.address[:256],
            role=role,
        )

    # -- patient data -------------------------------------------------------------------------

    def received(
        self, when: float, sender: Actor, study: StudyRef, *, outcome: int = SUCCESS, why: str = ""
    ) -> AuditEvent:
        """Instances of a study stored from a modality or PACS (or refused: `outcome`)."""
        return self._event(
            when,
            INSTANCES_TRANSFERRED,
            "C",
            [self._person(sender, SOURCE), self._box(DESTINATION)],
            outcome=outcome,
            outcome_text=why,
            objects=_objects([study]),
        )

    def exported(
        self,
        when: float,
        destination: Actor,
        study: StudyRef,
        *,
        what: str,
        outcome: int = SUCCESS,
        why: str = "",
        requestor: Actor | None = None,
    ) -> AuditEvent:
        """A study leaving the box: uploaded to the hub, a download, a slip printed."""
        people = [self._box(SOURCE, requestor=requestor is None)]
        people.append(
            AuditParticipant(
                user_id=destination.user_id[:256],
                address=destination.address[:256],
                role=DESTINATION,
            )
        )
        if requestor is not None:
            people.append(self._person(requestor))
        return self._event(
            when,
            EXPORT,
            "R",
            people,
            outcome=outcome,
            outcome_text=why,
            objects=_objects([study], what=what),
        )

    def retrieved(
        self, when: float, pacs: Actor, study: StudyRef, *, outcome: int = SUCCESS, why: str = ""
    ) -> AuditEvent:
        """A study fetched from the PACS (C-MOVE or C-GET) for a download."""
        return self._event(
            when,
            IMPORT,
            "C",
            [self._box(DESTINATION, requestor=True), self._person(pacs, SOURCE)],
            outcome=outcome,
            outcome_text=why,
            objects=_objects([study]),
        )

    def queried(
        self, when: float, pacs: Actor, query: str, *, outcome: int = SUCCESS, why: str = ""
    ) -> AuditEvent:
        """A C-FIND to the PACS; the query's keys in the object's details."""
        obj = AuditObject(
            id="1.2.840.10008.5.1.4.1.2.2.1",
            role=24,
            id_type=AuditCode(code="110181", meaning="SOP Class UID"),
            details={"query": query[:256]},
        )
        return self._event(
            when,
            QUERY,
            "E",
            [self._box(SOURCE, requestor=True), self._person(pacs, DESTINATION)],
            outcome=outcome,
            outcome_text=why,
            objects=(obj,),
        )

    def code(
        self, when: float, who: Actor, study: StudyRef, *, action: str, code_tail: str
    ) -> AuditEvent:
        """A Medis code issued ("C") or shown to someone ("R"); only its last symbols kept."""
        return self._event(
            when,
            PATIENT_RECORD,
            action,
            [self._person(who)],
            objects=_objects([study], code=f"…{code_tail}" if code_tail else ""),
        )

    # -- people, settings, software --------------------------------------------------------

    def authentication(
        self, when: float, who: Actor, *, login: bool, outcome: int = SUCCESS, why: str = ""
    ) -> AuditEvent:
        return self._event(
            when,
            USER_AUTHENTICATION,
            "E",
            [self._person(who), self._box(APPLICATION)],
            outcome=outcome,
            outcome_text=why,
            types=(LOGIN if login else LOGOUT,),
        )

    def configuration(
        self, when: float, who: Actor, what: str, *, kind: AuditCode = SOFTWARE_CONFIGURATION
    ) -> AuditEvent:
        """Settings, policy or the setup password changed (`what` says which)."""
        return self._event(
            when,
            SECURITY_ALERT,
            "E",
            [self._person(who), self._box()],
            outcome_text=what,
            types=(kind,),
            objects=(
                AuditObject(id=self.source, role=13, id_type=NODE_ID, details={"what": what[:256]}),
            ),
        )

    def update(
        self, when: float, who: Actor, version: str, *, outcome: int = SUCCESS, why: str = ""
    ) -> AuditEvent:
        """A system update installed, kept, refused or rolled back."""
        return self._event(
            when,
            SECURITY_ALERT,
            "E",
            [self._person(who), self._box()],
            outcome=outcome,
            outcome_text=why or f"system update {version}",
            types=(SOFTWARE_CONFIGURATION,),
            objects=(
                AuditObject(id=self.source, role=13, id_type=NODE_ID, details={"version": version}),
            ),
        )

    def log_used(self, when: float, who: Actor, what: str) -> AuditEvent:
        """Someone took the audit log or the diagnostics (which hold the logs) off the box."""
        return self._event(
            when,
            AUDIT_LOG_USED,
            "R",
            [self._person(who), self._box()],
            outcome_text=what,
            objects=(
                AuditObject(id=self.source, role=13, id_type=NODE_ID, details={"what": what[:256]}),
            ),
        )

    def application(self, when: float, *, start: bool, version: str) -> AuditEvent:
        return self._event(
            when,
            APPLICATION_ACTIVITY,
            "E",
            [self._box(APPLICATION)],
            outcome_text=f"AFRA {version}",
            types=(APPLICATION_START if start else APPLICATION_STOP,),
        )

    def recording_lost(self, when: float, count: int, why: str) -> AuditEvent:
        """Records that could not be kept: said, never silent."""
        return self._event(
            when,
            SECURITY_ALERT,
            "E",
            [self._box()],
            outcome=SERIOUS_FAILURE,
            outcome_text=f"{count} audit record(s) could not be kept: {why}",
            types=(AUDIT_RECORDING_STOPPED,),
        )
