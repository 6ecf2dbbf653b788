"""Where a download's studies come from: the box's own copy, or the PACS.

A study the box holds whole is zipped from the spool. One it lacks (or whose copy retention
removed meanwhile) is retrieved from the PACS by C-MOVE (C-GET fallback, `afra.dicom.scu`):
its instances go to the job's own folder (routed by the C-MOVE's Move Originator Message
ID, through `Receiver.divert`), not into the spool, and into the zip as they arrive. A
download is an export, not an intake: what it retrieves issues no Medis code and is never
uploaded as a new study; whatever the PACS still sends after the job stopped wanting it is
refused (0xA700). A retrieve the PACS ends half way is a failure, never a partial zip.

A study the box is still receiving (held, not yet complete) is not exported in part: with no
PACS to retrieve it from, the job waits for the box to complete it, holding no job slot,
until its completion is due (no instance for `study.stable_age`, seen by the completion
check within `study.scan_interval`) plus COMPLETION_MARGIN_S; instances that keep arriving
push that on, up to COMPLETION_WAIT_CAP_S in all. Only reaching `stable_age` is read on the
wall clock (as the completion check reads it); the rest is timed on the monotonic clock
from the moment the job finds the study quiet, so a step of the wall clock (NTP setting a
box without a real-time clock) cannot end the wait before the completion check has looked.
ExportStarted then says it waited; a study still arriving after that is RequestFailed,
saying so.

A patient's studies are the box's and those the PACS lists for the patient (C-FIND); with a
PACS that cannot list them, the merge fails rather than look whole.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty, Queue

from afra.audit import Actor, Audit, StudyRef
from afra.audit.events import SERIOUS_FAILURE, SUCCESS
from afra.clock import Clock
from afra.config import StudySettings
from afra.dicom.header import read_header
from afra.dicom.receive import Receiver, StoreRequest
from afra.dicom.scu import PacsClient, RetrieveResult
from afra.dicom.spool import Spool
from afra.errors import AfraError
from afra.node.export import ExportError, StudyZip
from afra.store.index import Index
from medix.models import DownloadStatus

LOG = logging.getLogger("afra.jobs")

S = DownloadStatus

# A download of a study still arriving waits for its completion this long past the moment
# it is due, and no longer than the cap in all however long instances keep arriving
# (both on the monotonic clock).
COMPLETION_MARGIN_S = 30.0
COMPLETION_WAIT_CAP_S = 3600.0

# emit(status, detail): a status on the job's timeline.
Emit = Callable[[DownloadStatus, str], None]


class PatientListingError(AfraError):
    """The PACS could not list a patient's studies."""


class JobSink:
    """Where the C-STORE sub-operations of a job's own C-MOVE (or C-GET) go."""

    def __init__(
        self,
        folder: Path,
        study_uid: str,
        arrived: Queue[Path | None],
        *,
        free: Callable[[int], bool] = lambda size: True,
    ) -> None:
        self.folder = folder
        self.study_uid = study_uid
        self.arrived = arrived
        self.free = free
        self.count = 0
        self.refuse = False  # the job ended early: refuse the rest of its retrieve
        self._lock = threading.Lock()

    def store(self, tmp: Path, request: StoreRequest) -> int | None:
        try:
            header = read_header(tmp)
        except AfraError:
            return None  # let the receiver refuse and quarantine it as usual
        if header.study_uid != self.study_uid:
            return None  # not what the job asked for: the normal path keeps it
        if self.refuse or not self.free(tmp.stat().st_size):
            return 0xA700  # out of resources: never into the store as a new study
        with self._lock:
            self.count += 1
            target = self.folder / f"{self.count:08d}.dcm"
        try:
            tmp.replace(target)
        except OSError as exc:
            LOG.error("could not keep a retrieved instance for a download: %s", exc)
            return 0xA700
        self.arrived.put(target)
        return 0x0000


class Retriever:
    """A job's studies into its zip, from the box or the PACS (see the module's docstring).

    `pacs` may be replaced while the box runs (new DICOM settings); `stop` is the download
    manager's: set, every wait and retrieve here ends early."""

    def __init__(
        self,
        *,
        index: Index,
        spool: Spool,
        receiver: Receiver,
        pacs: PacsClient | None,
        clock: Clock,
        stop: threading.Event,
        study: StudySettings,
        min_free_bytes: int = 0,
        audit: Audit | None = None,
    ) -> None:
        self.index = index
        self.spool = spool
        self.receiver = receiver
        self.pacs = pacs
        self.clock = clock
        self.study = study
        self.min_free_bytes = min_free_bytes
        self.audit = audit
        self._stop = stop
        self._msg_lock = threading.Lock()
        self._msg_ids: set[int] = set()

    def studies(self, subject: str) -> list[str]:
        """The studies a subject names: one, a list, or a patient's (the box's and the
        PACS's); PatientListingError when the PACS cannot list a patient's."""
        if subject.startswith("studies:"):
            return subject.removeprefix("studies:").split(",")
        if not subject.startswith("patient:"):
            return [subject]
        patient_id = subject.removeprefix("patient:")
        uids = self.index.studies_of_patient(patient_id)
        if self.pacs is not None:
            try:
                for match in self.pacs.find("STUDY", {"PatientID": patient_id}):
                    uid = str(match.get("StudyInstanceUID", ""))
                    if uid and match.get("PatientID", patient_id) == patient_id:
                        uids.append(uid)
            except (AfraError, OSError, ValueError) as exc:
                # A merge without the PACS's studies would look whole and not be.
                raise PatientListingError(
                    f"the PACS could not list the patient's studies: {exc}"
                ) from exc
        return list(dict.fromkeys(uids))

    def await_completion(self, job_id: str, subject: str) -> list[str]:
        """Wait for the studies the box is still receiving to complete (see the module's
        docstring); what it waited for, to say so in ExportStarted. Only with no PACS set:
        with one, a study the box does not hold whole is retrieved from it, as ever."""
        if self.pacs is not None:
            return []
        waited: list[str] = []
        start = self.clock.monotonic()
        grace = self.study.scan_interval + COMPLETION_MARGIN_S
        for uid in self.studies(subject):
            if not self.index.holding(uid).receiving:
                continue
            LOG.info("job %s: %s is still arriving at the box; waiting for it", job_id, uid)
            began = self.clock.monotonic()
            quiet_since: float | None = None  # monotonic: when the job found it quiet
            while self.index.holding(uid).receiving:
                quiet = self._quiet(uid)
                now = self.clock.monotonic()
                if quiet is None or now - start > COMPLETION_WAIT_CAP_S:
                    break
                if not quiet:
                    quiet_since = None  # an instance arrived: it is due later
                elif quiet_since is None:
                    quiet_since = now
                    LOG.info(
                        "job %s: %s is quiet; the completion check should complete it "
                        "within %.0f s",
                        job_id,
                        uid,
                        grace,
                    )
                elif now - quiet_since > grace:
                    break
                if self.clock.sleep(1.0, self._stop):
                    return waited
            # Said however the wait ended: the export needs the study whole (with no PACS it
            # has no other source), so the note is shown only if the box completed it, also
            # when that happened between the end of the wait and the export.
            waited.append(
                f"waited {self.clock.monotonic() - began:.0f} s for {uid} to complete on the box"
            )
        return waited

    def _quiet(self, uid: str) -> bool | None:
        """Whether no instance of the study has arrived for `study.stable_age`, so that the
        completion check may complete it; None when no revision of it is still receiving."""
        last = [s.last_received_at for s in self.index.due_studies(math.inf) if s.study_uid == uid]
        if not last:
            return None
        return self.clock.time() - max(last) >= self.study.stable_age

    def _zip(self, study_zip: StudyZip, path: Path) -> None:
        """One instance into the zip, unless the disk is at the intake's reserve."""
        if not self.room_for(path.stat().st_size):
            raise ExportError(
                "the box's disk is down to the reserve kept for receiving studies; "
                "downloads wait until space is freed"
            )
        study_zip.add(path)

    def gather(
        self, job_id: str, study_uid: str, study_zip: StudyZip, folder: Path, emit: Emit
    ) -> bool:
        """Put one study's instances into the zip, retrieving them when the box lacks them;
        False when it could not be had whole (its RequestFailed emitted) or the box is
        stopping."""
        if self.index.holding(study_uid).whole:
            try:
                for instance in self.index.held_instances(study_uid):
                    if self._stop.is_set():
                        return False
                    self._zip(study_zip, self.spool.absolute(instance.path))
                return True
            except (ExportError, OSError):
                if self.index.holding(study_uid).whole:
                    raise
                # Retention removed the local copy meanwhile: the PACS still has it.
                LOG.info("job %s: %s left the box while zipping; retrieving it", job_id, study_uid)
        if self.pacs is None:
            emit(S.RequestFailed, self._not_held(study_uid))
            return False
        incoming = folder / f"in-{study_uid[-16:]}"
        incoming.mkdir(parents=True, exist_ok=True)
        arrived: Queue[Path | None] = Queue()
        sink = JobSink(incoming, study_uid, arrived, free=self.room_for)
        ae = self.pacs.local.ae_title
        msg_id = self._divert(ae, sink)
        outcome: dict[str, object] = {}

        def retrieve() -> None:
            assert self.pacs is not None
            try:
                outcome["result"] = self.pacs.retrieve(study_uid, msg_id=msg_id, sink=sink)
            except (AfraError, OSError, ValueError, RuntimeError) as exc:
                outcome["error"] = exc
            finally:
                arrived.put(None)

        emit(S.RequestSent, study_uid)
        mover = threading.Thread(target=retrieve, name=f"job-{job_id}-move", daemon=True)
        mover.start()
        try:
            while True:
                try:
                    path = arrived.get(timeout=0.5)
                except Empty:
                    if self._stop.is_set():
                        return False
                    continue
                if path is None:
                    break
                self._zip(study_zip, path)
                path.unlink(missing_ok=True)  # in the zip now; keep the disk free
        finally:
            # Until the PACS has finished, what it still sends for this study is refused
            # (0xA700), never taken into the store as a new study.
            sink.refuse = True
            mover.join(timeout=None if not self._stop.is_set() else 5)
            self.receiver.divert(ae, msg_id, None)
            with self._msg_lock:
                self._msg_ids.discard(msg_id)
        while not arrived.empty():  # stored just before the divert ended
            late = arrived.get_nowait()
            if late is not None:
                self._zip(study_zip, late)
        error = outcome.get("error")
        result = outcome.get("result")
        assert result is None or isinstance(result, RetrieveResult)
        ok = error is None and result is not None and result.ok
        if self.audit is not None and self.pacs is not None:
            remote = getattr(self.pacs, "pacs", None)  # its settings (a stand-in may lack them)
            pacs = Actor(remote.ae_title, address=remote.host) if remote else Actor("the PACS")
            self.audit.record(
                self.audit.events.retrieved(
                    self.clock.time(),
                    pacs,
                    StudyRef(study_uid, instances=sink.count),
                    outcome=SUCCESS if ok else SERIOUS_FAILURE,
                    why="" if ok else f"{error or 'retrieve incomplete'}",
                )
            )
        if sink.count == 0 and ok and result is not None and result.completed:
            # A PACS that leaves the Move Originator out sends to the normal path instead:
            # take them from the spool, if all the PACS sent is there.
            held = self.index.held_instances(study_uid)
            if len(held) >= result.completed:
                for instance in held:
                    self._zip(study_zip, self.spool.absolute(instance.path))
                return True
        if sink.count == 0:
            why = str(error) if error else f"status {result.status if result else 0xC000:#06x}"
            emit(S.RequestFailed, f"{study_uid}: the PACS sent nothing ({why})")
            return False
        if not ok:
            why = (
                str(error)
                if error
                else (
                    f"status {result.status:#06x}, {result.failed} failed"
                    if result
                    else "no answer"
                )
            )
            emit(S.RequestFailed, f"{study_uid}: retrieve incomplete ({why})")
            return False
        return True

    def _not_held(self, study_uid: str) -> str:
        """Why a study cannot be exported from the box when no PACS is set, truthfully."""
        holding = self.index.holding(study_uid)
        if holding.receiving:
            held = len(self.index.held_instances(study_uid))
            return (
                f"{study_uid} is still arriving at the box ({held} instance(s) so far) and was "
                "not complete when the wait for it ended; no PACS is set to retrieve it from, "
                "and a zip never holds part of a study: ask again once it is complete"
            )
        if holding.purged:
            return (
                f"{study_uid} was removed from the box after delivery to the hub and no PACS "
                "is set to retrieve it from"
            )
        return f"{study_uid} is not on the box and no PACS is set"

    def room_for(self, size: int) -> bool:
        """Whether `size` bytes (twice over: the file and its copy in the zip) leave the
        intake's reserve free."""
        return self.spool.free_bytes() >= self.min_free_bytes + size * 2

    def _divert(self, ae: str, sink: JobSink) -> int:
        """A Message ID no other retrieve uses (1 is the CLI's), registered for `sink`."""
        with self._msg_lock:
            while True:
                msg_id = secrets.randbelow(0xFFFD) + 2
                if msg_id not in self._msg_ids:
                    break
            self._msg_ids.add(msg_id)
        self.receiver.divert(ae, msg_id, sink)
        return msg_id
