"""Asking the PACS: C-ECHO, C-FIND (study and series level), C-MOVE to the box, C-GET fallback.

Replies are untrusted input: the number of C-FIND matches is capped, every UID in a match is
checked against PS3.5 before anyone uses it, and counts are bounded integers.

pynetdicom's association reactor and the thread that sent a request both take decoded messages
off one queue; a response the reactor takes is logged as "unexpected" and dropped
(pydicom/pynetdicom#875), leaving a C-FIND one match short with a success status. It needs the
reactor woken but not yet paused again when the response arrives, as when a request follows
another on the same association (about 1 in 150 such requests on loopback). Every association
here therefore carries one request, and what pynetdicom decoded is counted against what
reached this module (`_Wire`): a response lost anyway is asked for again (C-FIND) or cannot
pass unseen.

A C-GET proposes a presentation context per (SOP class, transfer syntax) where the 128 allow
it, so the PACS sends each object as it holds it instead of converting it (`storage_contexts`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config, build_role, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from afra.config import STORABLE_TRANSFER_SYNTAXES, DicomSettings, PacsSettings
from afra.dicom.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from afra.dicom.header import is_valid_uid
from afra.dicom.receive import Receiver, StoreRequest, StoreSink
from afra.errors import AfraError, AssociationFailedError, PeerReplyError

LOG = logging.getLogger("afra.scu")


def configure_pynetdicom(tmp_dir: Path) -> None:
    """Process-wide pynetdicom settings for the box's SCU side.

    Objects arriving on a C-GET are received in chunks into a temp file (memory does not
    grow with object size); pynetdicom creates that file in tempfile's default folder, which
    must be on the spool's filesystem so the durable rename is atomic.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # The box checks what it relies on itself (header.py) and answers with a status; pydicom's
    # own value checks would only add warnings about the very data it refuses.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    tempfile.tempdir = str(tmp_dir)


LEVELS = ("STUDY", "SERIES")
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID")
MAX_COUNT = 1_000_000  # no study holds more instances than this; a larger count is a lie
# C-MOVE statuses meaning "the PACS cannot send to that destination": fall back to C-GET.
MOVE_DESTINATION_UNKNOWN = 0xA801
STATUS_PENDING = (0xFF00, 0xFF01)

_MOVE_GET_FALLBACK = (MOVE_DESTINATION_UNKNOWN, 0x0122, 0xA701, 0xA702)
# A C-FIND whose responses went missing inside pynetdicom is asked this many times in all.
_FIND_ATTEMPTS = 3
# How long to wait for pynetdicom's threads to end after a release or abort.
_CLOSE_WAIT_S = 5.0
# Presentation contexts a C-GET may propose for storage: 128 in all (PS3.8 9.3.2.2, odd
# context IDs 1-255), less the C-GET's own.
MAX_STORAGE_CONTEXTS = 127


def storage_contexts(
    classes: Sequence[str], syntaxes: Sequence[str], budget: int = MAX_STORAGE_CONTEXTS
) -> list[PresentationContext]:
    """The storage contexts a C-GET proposes, so that objects come back as the PACS holds them.

    The PACS (the acceptor) picks ONE transfer syntax in each proposed context; a C-STORE
    sub-operation of an object held in another syntax must be converted, or fails when the
    PACS cannot convert it (Orthanc: "Cannot transcode"). So every (SOP class, transfer
    syntax) pair gets a context of its own: a context with a single syntax is accepted or
    refused as it is, and the PACS can send each object on the context whose syntax is the
    one it holds the object in (Implicit and Explicit VR Little Endian are separate too:
    their data set bytes differ).

    `budget` contexts in all, shared out evenly over the classes (the first ones in
    `classes` get one more when it does not divide). A class whose share is smaller than
    the number of syntaxes gets single-syntax contexts for the first syntaxes of `syntaxes`
    (the box's order) and, as its last context, one proposing all the syntaxes left, so the
    PACS can still send what the class holds in those, converted if it must. Classes beyond
    `budget` are left out (a C-GET cannot ask for them); duplicates count once.
    """
    unique = list(dict.fromkeys(classes))[:budget]
    if not unique or not syntaxes:
        return []
    base, extra = divmod(budget, len(unique))
    contexts: list[PresentationContext] = []
    for i, uid in enumerate(unique):
        share = base + (i < extra)
        if share >= len(syntaxes):
            groups = [[ts] for ts in syntaxes]
        else:
            groups = [[ts] for ts in syntaxes[: share - 1]] + [list(syntaxes[share - 1 :])]
        contexts.extend(build_context(uid, group) for group in groups)
    return contexts


@dataclass
class RetrieveResult:
    """The outcome of a C-MOVE or C-GET of one study."""

    method: str
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    # Sub-operations the PACS counts as done that never reached the box (C-GET).
    missing: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000) and self.failed == 0 and self.missing == 0


class _Wire:
    """The responses pynetdicom decoded on one association, in order.

    Filled from EVT_DIMSE_RECV on pynetdicom's DUL thread, before the message joins the queue
    the reactor could take it from; a response therefore appears here before the caller can
    read it, and the list is only appended to.
    """

    def __init__(self) -> None:
        self.responses: list[tuple[int, bool]] = []  # (message id answered, pending)

    def received(self, event: Any) -> None:
        command = event.message.command_set
        answered = command.get("MessageIDBeingRespondedTo")
        if answered is not None:  # requests (a C-GET's C-STOREs) are not responses
            self.responses.append((int(answered), command.get("Status") in STATUS_PENDING))

    def lost(self, msg_id: int, pending_read: int, what: str) -> int:
        """How many pending responses to `msg_id` before its final one the caller never read.

        Call once the final response has been read. A response to another message is one the
        box did not ask for on this association: PeerReplyError, never a match of this one.
        """
        pending = 0
        for answered, is_pending in list(self.responses):
            if answered != msg_id:
                raise PeerReplyError(
                    f"PACS answered message {answered} during the {what} of message {msg_id}"
                )
            if not is_pending:
                break
            pending += 1
        return max(0, pending - pending_read)


def _bounded(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PeerReplyError(f"{what} {value!r} is not a number") from None
    if not 0 <= number <= MAX_COUNT:
        raise PeerReplyError(f"{what} {number} is out of range")
    return number


def parse_keys(pairs: Mapping[str, str], level: str) -> Dataset:
    """Build a C-FIND identifier from keyword=value pairs (empty value = return this key)."""
    if level not in LEVELS:
        raise ValueError(f"query level must be one of {', '.join(LEVELS)}, not {level!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "ModalitiesInStudy",
        "AccessionNumber",
        "NumberOfStudyRelatedInstances",
    ):
        if level == "STUDY":
            setattr(ds, keyword, "")
    if level == "SERIES":
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.NumberOfSeriesRelatedInstances = ""
    for keyword, value in pairs.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot use {keyword}={value!r} as a query key: {exc}") from None
    if level == "SERIES" and not ds.StudyInstanceUID:
        raise ValueError("a SERIES level query needs StudyInstanceUID=<uid>")
    return ds


class PacsClient:
    """A client of one PACS, speaking as the box's own AE title."""

    def __init__(
        self,
        pacs: PacsSettings,
        local: DicomSettings,
        *,
        receiver: Receiver | None = None,
    ) -> None:
        self.pacs = pacs
        self.local = local
        self.receiver = receiver

    def _study_sop_classes(self, study_uid: str) -> list[str]:
        """The storage classes to offer for a C-GET: what the PACS says the study holds."""
        listed: Any = None
        try:
            for match in self.find(
                "STUDY", {"StudyInstanceUID": study_uid, "SOPClassesInStudy": ""}
            ):
                if match.StudyInstanceUID == study_uid:
                    listed = match.get("SOPClassesInStudy")
        except (AfraError, OSError) as exc:
            LOG.info("PACS did not list the study's SOP classes (%s); offering the usual", exc)
        values = [listed] if isinstance(listed, str) else list(listed or ())
        classes = list(dict.fromkeys(str(v) for v in values if is_valid_uid(str(v))))
        if not classes:
            classes = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
        return classes[:MAX_STORAGE_CONTEXTS]  # one context is the C-GET's own

    def _storage_syntaxes(self) -> list[str]:
        """The transfer syntaxes a C-GET accepts objects in: those the box's Storage SCP
        accepts (`dicom.accepted_transfer_syntaxes`), in the box's order."""
        accepted = set(self.local.accepted_transfer_syntaxes)
        return [ts for ts in STORABLE_TRANSFER_SYNTAXES if ts in accepted]

    @contextmanager
    def _associate(
        self,
        contexts: list[Any],
        *,
        storage: Sequence[PresentationContext] = (),
        evt_handlers: Sequence[tuple[Any, Callable[[Any], Any]]] = (),
        **kwargs: Any,
    ) -> Iterator[tuple[Any, _Wire]]:
        """One association for one request (see the module's docstring)."""
        ae = AE(ae_title=self.local.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = self.local.acse_timeout
        ae.dimse_timeout = self.local.dimse_timeout
        ae.network_timeout = self.local.network_timeout
        ae.maximum_pdu_size = self.local.max_pdu
        for cx in contexts:
            ae.add_requested_context(cx)
        for cx in storage:  # C-GET: see storage_contexts
            ae.add_requested_context(str(cx.abstract_syntax), cx.transfer_syntax)
        wire = _Wire()
        assoc = ae.associate(
            self.pacs.host,
            self.pacs.port,
            ae_title=self.pacs.ae_title,
            evt_handlers=[*evt_handlers, (evt.EVT_DIMSE_RECV, wire.received)],
            **kwargs,
        )
        if not assoc.is_established:
            raise AssociationFailedError(
                f"PACS {self.pacs.ae_title} at {self.pacs.host}:{self.pacs.port} did not accept "
                "an association (check its AE title, address, and that it knows this box)"
            )
        raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        try:
            yield assoc, wire
        finally:
            if assoc.is_established:
                assoc.release()
            # pynetdicom skips closing its socket when the shutdown before it fails (a PACS
            # that hung up first) and leaves the descriptor to the garbage collector; once
            # the association's threads are done, close it here (a second close is a no-op).
            assoc.join(timeout=_CLOSE_WAIT_S)
            assoc.dul.join(timeout=_CLOSE_WAIT_S)
            if raw is not None:
                raw.close()

    def echo(self) -> int:
        with self._associate([Verification]) as (assoc, _wire):
            status = assoc.send_c_echo()
        if "Status" not in status:
            raise AssociationFailedError("PACS did not answer the C-ECHO")
        return int(status.Status)

    def find(self, level: str, keys: Mapping[str, str]) -> list[Dataset]:
        """C-FIND in the Study Root model; matches with invalid UIDs are dropped."""
        query = parse_keys(keys, level)
        uid_key = UID_KEYS[LEVELS.index(level)]
        for attempt in range(1, _FIND_ATTEMPTS + 1):
            with self._associate([StudyRootQueryRetrieveInformationModelFind]) as (assoc, wire):
                matches, lost = _find_on(assoc, wire, query, uid_key, self.pacs.max_results)
            if not lost:
                return matches
            LOG.warning(
                "C-FIND: %d of the PACS's responses were lost in pynetdicom (attempt %d of %d)",
                lost,
                attempt,
                _FIND_ATTEMPTS,
            )
        raise PeerReplyError(
            f"C-FIND responses from the PACS were lost {_FIND_ATTEMPTS} times in a row; "
            "its matches are unknown"
        )

    def study_instance_count(self, study_uid: str) -> int | None:
        """The PACS's NumberOfStudyRelatedInstances for a study, or None if it does not say."""
        matches = self.find("STUDY", {"StudyInstanceUID": study_uid})
        for match in matches:
            if match.get("StudyInstanceUID") == study_uid:
                value = match.get("NumberOfStudyRelatedInstances")
                if value in (None, ""):
                    return None
                return _bounded(value, "NumberOfStudyRelatedInstances")
        return None

    def move(
        self, study_uid: str, destination: str | None = None, *, msg_id: int = 1
    ) -> RetrieveResult:
        """C-MOVE a study to the box's own AE (or `destination`).

        `msg_id` comes back in each C-STORE sub-operation as the Move Originator Message ID,
        which lets the receiver route them (Receiver.divert)."""
        if not is_valid_uid(study_uid):
            raise ValueError(f"{study_uid!r} is not a valid Study Instance UID")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        result = RetrieveResult(method="C-MOVE", status=0xC000)
        with self._associate([StudyRootQueryRetrieveInformationModelMove]) as (assoc, wire):
            responses = assoc.send_c_move(
                query,
                destination or self.local.ae_title,
                StudyRootQueryRetrieveInformationModelMove,
                msg_id=msg_id,
            )
            _collect(responses, result, wire, msg_id)
        return result

    def get(self, study_uid: str, *, sink: StoreSink | None = None) -> RetrieveResult:
        """C-GET a study over one association, storing what arrives through the Receiver
        (or into `sink`, for what the sink takes)."""
        if self.receiver is None and sink is None:
            raise RuntimeError("C-GET needs a receiver to store into")
        if not is_valid_uid(study_uid):
            raise ValueError(f"{study_uid!r} is not a valid Study Instance UID")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        classes = self._study_sop_classes(study_uid)
        storage = storage_contexts(classes, self._storage_syntaxes())
        # One role selection item per SOP class (PS3.7 D.3.3.4), whatever its contexts.
        roles = [build_role(uid, scp_role=True) for uid in classes]
        receiver = self.receiver
        answered: list[int] = []  # the box's answer to each C-STORE sub-operation

        def handler(event: Any) -> int:
            status = _store_from_get(event, receiver, sink)
            answered.append(status)
            return status

        result = RetrieveResult(method="C-GET", status=0xC000)
        with self._associate(
            [StudyRootQueryRetrieveInformationModelGet],
            storage=storage,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, handler)],
        ) as (assoc, wire):
            responses = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=1)
            _collect(responses, result, wire, 1)
        kept = sum(1 for status in answered if code_to_category(status) in ("Success", "Warning"))
        claimed = result.completed + result.warning
        if claimed > kept:
            result.missing = claimed - kept
            result.notes.append(f"the PACS counts {claimed} sub-operations done; {kept} arrived")
        return result

    def retrieve(
        self, study_uid: str, *, msg_id: int = 1, sink: StoreSink | None = None
    ) -> RetrieveResult:
        """C-MOVE to the box; when the PACS cannot move to it, C-GET instead."""
        try:
            moved = self.move(study_uid, msg_id=msg_id)
        except AssociationFailedError as exc:
            moved = RetrieveResult(method="C-MOVE", status=0xC000, notes=[str(exc)])
        if moved.ok or (self.receiver is None and sink is None):
            return moved
        if moved.status in _MOVE_GET_FALLBACK or moved.status >= 0xC000:
            LOG.info("C-MOVE failed (0x%04X); trying C-GET", moved.status)
            got = self.get(study_uid, sink=sink)
            got.notes = [f"C-MOVE answered 0x{moved.status:04X}", *moved.notes, *got.notes]
            return got
        return moved


def _find_on(
    assoc: Any, wire: _Wire, query: Dataset, uid_key: str, limit: int, msg_id: int = 1
) -> tuple[list[Dataset], int]:
    """One C-FIND on an open association: the valid matches, and how many of the PACS's
    responses pynetdicom lost before they were read (they are not among the matches)."""
    matches: list[Dataset] = []
    dropped = read = 0
    final = False
    for status, identifier in assoc.send_c_find(
        query, StudyRootQueryRetrieveInformationModelFind, msg_id=msg_id
    ):
        if "Status" not in status:
            raise AssociationFailedError("PACS stopped answering the C-FIND")
        if status.Status not in STATUS_PENDING:
            if status.Status not in (0x0000, 0xFE00):
                raise PeerReplyError(
                    f"PACS answered the C-FIND with status 0x{int(status.Status):04X}"
                )
            final = True
            continue
        read += 1
        if identifier is None:
            continue
        if not is_valid_uid(identifier.get(uid_key)) or not is_valid_uid(
            identifier.get("StudyInstanceUID")
        ):
            dropped += 1
            continue
        matches.append(identifier)
        if len(matches) >= limit:
            LOG.warning("C-FIND stopped at %d matches (pacs.max_results)", limit)
            assoc.abort()
            return matches, 0
    if not final:
        raise AssociationFailedError("PACS ended the C-FIND without a final response")
    if dropped:
        LOG.warning("dropped %d C-FIND matches with invalid UIDs from the PACS", dropped)
    return matches, wire.lost(msg_id, read, "C-FIND")


def _collect(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    result: RetrieveResult,
    wire: _Wire,
    msg_id: int,
) -> None:
    """Read a C-MOVE's or C-GET's responses into `result`; only a final response ends it well.

    A pending response lost in pynetdicom costs nothing: the final one carries the counts."""
    for read, (status, _identifier) in enumerate(responses):  # read: pending ones so far
        if "Status" not in status:
            result.status = 0xC000
            result.notes.append("PACS stopped answering")
            return
        result.status = int(status.Status)
        for attr, name in (
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
        ):
            if name in status and status.get(name) not in (None, ""):
                setattr(result, attr, _bounded(status.get(name), name))
        if result.status not in STATUS_PENDING:
            wire.lost(msg_id, read, result.method)  # a response to another message raises
            return
    result.status = 0xC000
    result.notes.append("PACS ended without a final response")


def _store_from_get(event: Any, receiver: Receiver | None, sink: StoreSink | None) -> int:
    assoc = event.assoc
    tmp = Path(event.dataset_path)
    request = StoreRequest(
        sop_class_uid=str(event.request.AffectedSOPClassUID or ""),
        sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
        context_abstract_syntax=str(event.context.abstract_syntax),
        calling_ae=str(assoc.acceptor.ae_title).strip(),
        peer_address=str(assoc.acceptor.address),
    )
    if sink is not None:
        status = sink.store(tmp, request)
        if status is not None:
            return status
    if receiver is None:
        return 0xA900  # not the study asked for, and nowhere else to keep it
    return receiver.store(tmp, request)
