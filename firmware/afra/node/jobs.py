"""Study downloads the hub asks for: a job per request, its timeline, its webhook posts.

A request (HTTP API or command) is checked, then answered at once with a job id; the job runs
on its own thread (at most `downloads.max_running` at a time):

    ProcessStarted 0 [MergeStarted 8] -> per study not on the box: RequestSent 1 (C-MOVE,
    C-GET fallback) or RequestFailed -4 -> ExportStarted 2 (or ExportFailed -3) ->
    CompressStarted 3 -> CompressFinished 4 -> ExportCompleted 5 [MergeCompleted 10, or
    MergeFailed -1] -> DownloadStarted 6 -> DownloadSaved 7 (File = the hub's URL) or
    DownloadFailed -2.

The statuses keep that order, but the work overlaps: instances go into the zip as they
arrive from the PACS, and the zip's parts go to the hub while it is still being written.
Instances retrieved for a download go to the job's own folder (routed by the C-MOVE's
Move Originator Message ID), not into the spool: a download is an export, not an intake,
so it issues no Medis code and uploads nothing as a new study. The folder is removed when
the job ends.

Every status is an event in `jobs.sqlite`; each webhook subscriber has its own thread that
posts the events in order, retrying with capped backoff, and resumes after a restart. A
repeated request for the same studies and user joins the running job (a new webhook target
is added as a subscriber and is sent the timeline from the start). A job cut by a restart
is ended with the failure status of the step it was in, so nobody waits for it forever.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from urllib.parse import urlsplit

from afra.audit import Actor, Audit, StudyRef
from afra.audit.events import SERIOUS_FAILURE, SUCCESS
from afra.clock import Clock
from afra.config import DownloadSettings, StudySettings
from afra.dicom.header import read_header
from afra.dicom.receive import Receiver, StoreRequest
from afra.dicom.scu import PacsClient, RetrieveResult
from afra.dicom.spool import Spool
from afra.errors import AfraError
from afra.node.export import ExportError, FileUploader, StudyZip, UploadError
from afra.node.webhook import PostResult, Target, WebhookGuard, WebhookPoster, WebhookRefused
from afra.store.index import Index
from afra.store.sqlite import SqliteStore
from afra.uplink.client import HubClient, HubError
from medix.models import DownloadAccepted, DownloadRequest, DownloadStatus, WebhookProgress

LOG = logging.getLogger("afra.jobs")

S = DownloadStatus
SENDER_RETRY_S = 10

TERMINAL = {S.RequestFailed, S.ExportFailed, S.DownloadFailed, S.MergeFailed, S.DownloadSaved}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    join_key TEXT NOT NULL,
    subject TEXT NOT NULL,
    userid TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER NOT NULL,
    file_url TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (state, join_key);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS subscribers (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    headers_json TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active',
    last_error TEXT NOT NULL DEFAULT ''
);
"""

RUNNING, SAVED, FAILED = "running", "saved", "failed"

# A download of a study still arriving waits for its completion this long past the moment
# it is due, and no longer than the cap in all however long instances keep arriving
# (both on the monotonic clock).
COMPLETION_MARGIN_S = 30.0
COMPLETION_WAIT_CAP_S = 3600.0


@dataclass(frozen=True)
class Event:
    seq: int
    status: int
    at: float
    detail: str
    file: str

    @property
    def name(self) -> str:
        return DownloadStatus(self.status).name


@dataclass(frozen=True)
class Job:
    id: str
    subject: str
    userid: str
    source: str
    state: str
    status: int
    file_url: str
    error: str
    created_at: float
    updated_at: float
    events: tuple[Event, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "job_id": self.id,
            "subject": self.subject,
            "userid": self.userid,
            "source": self.source,
            "state": self.state,
            "status": self.status,
            "status_name": DownloadStatus(self.status).name,
            "file": self.file_url,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "timeline": [
                {"status": e.status, "name": e.name, "at": e.at, "detail": e.detail}
                for e in self.events
            ],
        }


@dataclass(frozen=True)
class Subscriber:
    id: int
    job_id: str
    uri: str
    headers: dict[str, str]
    delivered: int
    state: str


class JobStore(SqliteStore):
    """The jobs' record: jobs, their events, their webhook subscribers."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, exclusive_fallback=True)  # the box starts on a full disk
        path.chmod(0o600)  # it holds the hub's authorization headers

    def running_with_key(self, join_key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'running' AND join_key = ?", (join_key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def add_job(
        self, job_id: str, join_key: str, subject: str, userid: str, source: str, now: float
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, join_key, subject, userid, source, state, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'running', 0, ?, ?)",
                (job_id, join_key, subject, userid, source, now, now),
            )

    def add_subscriber(self, job_id: str, uri: str, headers: dict[str, str]) -> int | None:
        """A webhook target for the job; None when the same target is already subscribed."""
        encoded = json.dumps(headers, sort_keys=True)
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM subscribers WHERE job_id = ? AND uri = ? AND headers_json = ?",
                (job_id, uri, encoded),
            ).fetchone()
            if row is not None:
                # A repeated request revives a target that had been given up on (its posts
                # resume where they stopped); an active one is left alone.
                revived = db.execute(
                    "UPDATE subscribers SET state = 'active', last_error = '' "
                    "WHERE id = ? AND state != 'active'",
                    (row[0],),
                ).rowcount
                return int(row[0]) if revived else None
            cur = db.execute(
                "INSERT INTO subscribers (job_id, uri, headers_json) VALUES (?, ?, ?)",
                (job_id, uri, encoded),
            )
            return int(cur.lastrowid or 0)

    def add_event(
        self, job_id: str, status: DownloadStatus, now: float, detail: str = "", file: str = ""
    ) -> None:
        with self._transaction() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO events (job_id, seq, status, at, detail, file) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, seq, int(status), now, detail[:500], file),
            )
            state = RUNNING
            if status == S.DownloadSaved:
                state = SAVED
            elif status in TERMINAL:
                state = FAILED
            db.execute(
                "UPDATE jobs SET status = ?, state = ?, updated_at = ?, "
                "file_url = CASE WHEN ? != '' THEN ? ELSE file_url END, "
                "error = CASE WHEN ? = 'failed' THEN ? ELSE error END WHERE id = ?",
                (int(status), state, now, file, file, state, detail[:500], job_id),
            )

    def events(self, job_id: str) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, status, at, detail, file FROM events WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [Event(int(r[0]), int(r[1]), float(r[2]), str(r[3]), str(r[4])) for r in rows]

    def _job(self, row: tuple[object, ...]) -> Job:
        return Job(*row, events=tuple(self.events(str(row[0]))))  # type: ignore[arg-type, misc]

    _COLUMNS = "id, subject, userid, source, state, status, file_url, error, created_at, updated_at"

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, limit: int = 50) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._job(row) for row in rows]

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE state = 'running'"
            ).fetchall()
        return [self._job(row) for row in rows]

    def subscribers(self, job_id: str | None = None, active: bool = False) -> list[Subscriber]:
        sql = "SELECT id, job_id, uri, headers_json, delivered, state FROM subscribers"
        where, params = [], []
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        if active:
            where.append("state = 'active'")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            Subscriber(int(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), int(r[4]), str(r[5]))
            for r in rows
        ]

    def delivered(self, subscriber_id: int, count: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET delivered = ?, last_error = '' WHERE id = ?",
                (count, subscriber_id),
            )

    def end_subscriber(self, subscriber_id: int, state: str, error: str = "") -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET state = ?, last_error = ? WHERE id = ?",
                (state, error[:500], subscriber_id),
            )

    def subscriber_error(self, subscriber_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE subscribers SET last_error = ? WHERE id = ?", (error[:500], subscriber_id)
            )

    def forget_before(self, when: float) -> int:
        with self._transaction() as db:
            old = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state != 'running' AND updated_at < ?", (when,)
                )
            ]
            for job_id in old:
                for table in ("events", "subscribers"):
                    db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return len(old)


class _PatientListingError(AfraError):
    pass


class _JobSink:
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


class DownloadManager:
    def __init__(
        self,
        settings: DownloadSettings,
        *,
        data_dir: Path,
        index: Index,
        spool: Spool,
        receiver: Receiver,
        pacs: PacsClient | None,
        hub: HubClient | None,
        guard: WebhookGuard,
        poster: WebhookPoster,
        clock: Clock,
        part_size: int = 2 * 1048576,
        compression_level: int = 3,
        zip_level: int = 1,
        min_free_bytes: int = 0,
        study: StudySettings | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.audit = audit
        self._audited: dict[str, list[str]] = {}  # job id -> its studies, until it ends
        self.settings = settings
        # When a study still arriving will be complete (the box's `study` section).
        self.study = study or StudySettings()
        self.min_free_bytes = min_free_bytes
        self._msg_lock = threading.Lock()
        self._msg_ids: set[int] = set()
        self.folder = data_dir / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir / "jobs.sqlite")
        self.index = index
        self.spool = spool
        self.receiver = receiver
        self.pacs = pacs
        self.hub = hub
        self.guard = guard
        self.poster = poster
        self.clock = clock
        self.part_size = part_size
        self.compression_level = compression_level
        self.zip_level = zip_level
        self._accept_lock = threading.Lock()
        self._slots = threading.Semaphore(settings.max_running)
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._senders: dict[int, threading.Thread] = {}
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """End jobs a restart cut short, and resume their undelivered webhook posts."""
        self._stop.clear()
        self._started = True
        for job in self.store.running():
            self._cut_short(job)
        for leftover in self.folder.iterdir():  # a crash between a job's end and its cleanup
            shutil.rmtree(leftover, ignore_errors=True)
            if leftover.exists():
                LOG.error("could not remove %s (a download's files); remove it by hand", leftover)
        self.store.forget_before(self.clock.time() - self.settings.keep_jobs_days * 86400)
        for sub in self.store.subscribers(active=True):
            self._start_sender(sub)

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        with self._accept_lock:
            threads = [*self._threads, *self._senders.values()]
        for thread in threads:
            thread.join(timeout=30)
        self._threads.clear()
        self._senders.clear()
        self._started = False

    def close(self) -> None:
        self.stop()
        self.store.close()

    def _cut_short(self, job: Job) -> None:
        last = job.status
        if last in (S.ProcessStarted, S.MergeStarted, S.RequestSent):
            failure = S.RequestFailed
        elif last in (S.ExportStarted, S.CompressStarted, S.CompressFinished):
            failure = S.ExportFailed
        else:
            failure = S.DownloadFailed
        detail = "the box restarted during the job; ask for the download again"
        self._emit(job.id, failure, detail)
        if job.subject.startswith(("patient:", "studies:")):
            self._emit(job.id, S.MergeFailed, detail)
        shutil.rmtree(self.folder / job.id, ignore_errors=True)

    # -- accepting -------------------------------------------------------------------------

    def submit(self, request: DownloadRequest, source: str = "command") -> DownloadAccepted:
        """Check a request and start (or join) its job; WebhookRefused when the target is bad."""
        if self._stop.is_set():
            raise AfraError("the box is stopping; ask again in a moment")
        try:
            target = self.guard.check(request.WebhookUri)
        except WebhookRefused as exc:
            LOG.warning("download request refused (from %s): %s", source, exc)
            raise
        headers = {str(k): str(v) for k, v in request.WebhookHeaders.model_dump().items()}
        if request.PatientID is not None:
            subject = f"patient:{request.PatientID}"
        elif isinstance(request.StudyInstanceUID, tuple):
            uids = sorted(set(request.StudyInstanceUID))
            subject = uids[0] if len(uids) == 1 else "studies:" + ",".join(uids)
        else:
            subject = str(request.StudyInstanceUID)
        join_key = hashlib.sha256(f"{subject}\n{headers['userid']}".encode()).hexdigest()
        with self._accept_lock:
            job_id = self.store.running_with_key(join_key)
            joined = job_id is not None
            if job_id is None:
                job_id = secrets.token_hex(8)
                self.store.add_job(
                    job_id, join_key, subject, headers["userid"], source, self.clock.time()
                )
                kind = subject.split(":", 1)[0] if ":" in subject else "study"
                LOG.info("download job %s accepted (%s, from %s)", job_id, kind, source)
            sub_id = self.store.add_subscriber(job_id, target.url, headers)
            if not joined:
                self._emit(job_id, S.ProcessStarted)
                thread = threading.Thread(
                    target=self._run, args=(job_id, subject), name=f"job-{job_id}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                LOG.info("download request joined running job %s", job_id)
        if sub_id is not None:
            for sub in self.store.subscribers(job_id):
                if sub.id == sub_id:
                    self._start_sender(sub, target)
        job = self.store.job(job_id)
        status = job.status if job is not None else 0
        return DownloadAccepted(job_id=job_id, joined=joined, Status=str(status))

    def jobs(self, limit: int = 50) -> list[Job]:
        return self.store.jobs(limit)

    def job(self, job_id: str) -> Job | None:
        return self.store.job(job_id)

    # -- the job -----------------------------------------------------------------------------

    def _emit(self, job_id: str, status: DownloadStatus, detail: str = "", file: str = "") -> None:
        self.store.add_event(job_id, status, self.clock.time(), detail, file)
        LOG.info("job %s: %s%s", job_id, status.name, f" ({detail})" if detail else "")
        if status in TERMINAL and job_id in self._audited:
            self._audit(job_id, status, detail)
        with self._wake:
            self._wake.notify_all()

    def _run(self, job_id: str, subject: str) -> None:
        try:
            waited = self._await_completion(job_id, subject)  # before taking a job slot
        except Exception as exc:
            LOG.exception("download job %s failed unexpectedly", job_id)
            merge = subject.startswith(("patient:", "studies:"))
            self._fail(job_id, merge, S.RequestFailed, f"unexpected error: {exc}")
            return
        with self._slots:
            if self._stop.is_set():
                return  # left running: the next start ends it with its failure status
            folder = self.folder / job_id
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self._work(job_id, subject, folder, waited)
            except Exception as exc:
                LOG.exception("download job %s failed unexpectedly", job_id)
                self._emit(job_id, S.ExportFailed, f"unexpected error: {exc}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _studies(self, subject: str) -> list[str]:
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
                raise _PatientListingError(
                    f"the PACS could not list the patient's studies: {exc}"
                ) from exc
        return list(dict.fromkeys(uids))

    def _await_completion(self, job_id: str, subject: str) -> list[str]:
        """Wait for the studies the box is still receiving to complete (see the module's
        docstring); what it waited for, to say so in ExportStarted. Only with no PACS set:
        with one, a study the box does not hold whole is retrieved from it, as ever."""
        if self.pacs is not None:
            return []
        waited: list[str] = []
        start = self.clock.monotonic()
        grace = self.study.scan_interval + COMPLETION_MARGIN_S
        for uid in self._studies(subject):
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

    def _work(self, job_id: str, subject: str, folder: Path, waited: list[str]) -> None:
        merge = subject.startswith(("patient:", "studies:"))
        if merge:
            self._emit(job_id, S.MergeStarted)
        try:
            studies = self._studies(subject)
        except _PatientListingError as exc:
            self._emit(job_id, S.RequestFailed, str(exc))
            self._emit(job_id, S.MergeFailed, "the patient's studies are not all known")
            return
        if not studies:
            self._emit(job_id, S.RequestFailed, "no study found for the patient")
            self._emit(job_id, S.MergeFailed, "nothing to merge")
            return
        self._audited[job_id] = studies
        if self.hub is None:
            self._fail(job_id, merge, S.DownloadFailed, "the box is not enrolled with a hub")
            return
        study_zip = StudyZip(folder / "study.zip", level=self.zip_level)
        name = f"{'studies' if merge else 'study'}-{job_id}.zip"
        uploader = FileUploader(
            self.hub,
            job_id=job_id,
            name=name,
            path=study_zip.path,
            part_size=self.part_size,
            clock=self.clock,
            stop=self._stop,
            compression_level=self.compression_level,
        )
        try:
            uploader.open(retry=False)  # a hub that is down now is asked again at the end
            study_zip.listeners.append(uploader.grown)
        except HubError as exc:
            LOG.warning("job %s: the hub is not taking files now (%s); zipping first", job_id, exc)
        try:
            for uid in studies:
                if not self._gather(job_id, uid, study_zip, folder):
                    study_zip.abandon()
                    uploader.abandon()
                    if merge:
                        self._emit(job_id, S.MergeFailed, f"study {uid} could not be retrieved")
                    return
            exported = [f"{study_zip.count} instance(s)", *waited]
            self._emit(job_id, S.ExportStarted, "; ".join(exported))
            self._emit(job_id, S.CompressStarted)
            size, digest = study_zip.close()
        except ExportError as exc:
            study_zip.abandon()
            uploader.abandon()
            self._fail(job_id, merge, S.ExportFailed, str(exc))
            return
        except BaseException:  # anything else (an OSError reading an instance): nothing left open
            study_zip.abandon()
            uploader.abandon()
            raise
        self._emit(job_id, S.CompressFinished, f"{size} bytes")
        self._emit(job_id, S.ExportCompleted)
        if merge:
            self._emit(job_id, S.MergeCompleted, f"{len(studies)} studies")
        self._emit(job_id, S.DownloadStarted)
        try:
            if not uploader.file_id:
                uploader.open()
                uploader.grown(size)
            saved = uploader.finish(size, digest)
        except (UploadError, HubError) as exc:
            uploader.abandon()
            self._emit(job_id, S.DownloadFailed, str(exc))
            return
        if saved.sha256 != digest or saved.size != size:
            self._emit(job_id, S.DownloadFailed, "the hub holds a different file than was sent")
            return
        self._emit(job_id, S.DownloadSaved, f"{size} bytes", file=saved.url)

    def _audit(self, job_id: str, status: DownloadStatus, detail: str) -> None:
        """The studies of a job that ended: exported to the hub's user, or not (and why)."""
        studies = self._audited.pop(job_id, [])
        if self.audit is None:
            return
        hub = Actor(self.hub.identity.hub_url if self.hub is not None else "the hub")
        ok = status == S.DownloadSaved
        for uid in studies:
            patient_id, patient_name = self.index.patient_of(uid)
            self.audit.record(
                self.audit.events.exported(
                    self.clock.time(),
                    hub,
                    StudyRef(uid, patient_id, patient_name),
                    what=f"download job {job_id}",
                    outcome=SUCCESS if ok else SERIOUS_FAILURE,
                    why="" if ok else f"{status.name}: {detail}",
                )
            )

    def _fail(self, job_id: str, merge: bool, status: DownloadStatus, detail: str) -> None:
        self._emit(job_id, status, detail)
        if merge:
            self._emit(job_id, S.MergeFailed, detail)

    def _zip(self, study_zip: StudyZip, path: Path) -> None:
        """One instance into the zip, unless the disk is at the intake's reserve."""
        if not self._room_for(path.stat().st_size):
            raise ExportError(
                "the box's disk is down to the reserve kept for receiving studies; "
                "downloads wait until space is freed"
            )
        study_zip.add(path)

    def _gather(self, job_id: str, study_uid: str, study_zip: StudyZip, folder: Path) -> bool:
        """Put one study's instances into the zip, retrieving them when the box lacks them."""
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
            self._emit(job_id, S.RequestFailed, self._not_held(study_uid))
            return False
        incoming = folder / f"in-{study_uid[-16:]}"
        incoming.mkdir(parents=True, exist_ok=True)
        arrived: Queue[Path | None] = Queue()
        sink = _JobSink(incoming, study_uid, arrived, free=self._room_for)
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

        self._emit(job_id, S.RequestSent, study_uid)
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
            self._emit(job_id, S.RequestFailed, f"{study_uid}: the PACS sent nothing ({why})")
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
            self._emit(job_id, S.RequestFailed, f"{study_uid}: retrieve incomplete ({why})")
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

    def _room_for(self, size: int) -> bool:
        return self.spool.free_bytes() >= self.min_free_bytes + size * 2

    def _divert(self, ae: str, sink: _JobSink) -> int:
        """A Message ID no other retrieve uses (1 is the CLI's), registered for `sink`."""
        with self._msg_lock:
            while True:
                msg_id = secrets.randbelow(0xFFFD) + 2
                if msg_id not in self._msg_ids:
                    break
            self._msg_ids.add(msg_id)
        self.receiver.divert(ae, msg_id, sink)
        return msg_id

    # -- webhook senders ------------------------------------------------------------------

    def _start_sender(self, sub: Subscriber, target: Target | None = None) -> None:
        if not self._started or self._stop.is_set():
            return
        with self._accept_lock:
            running = self._senders.get(sub.id)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(
                target=self._send_loop, args=(sub, target), name=f"webhook-{sub.id}", daemon=True
            )
            self._senders[sub.id] = thread
        thread.start()

    def _send_loop(self, sub: Subscriber, target: Target | None) -> None:
        """A target's sender: a failure of the box's own (its job store on a full disk) is
        logged and the sender goes on after a pause, instead of ending silently with the
        job's later statuses never posted (one may then be posted twice)."""
        while not self._stop.is_set():
            try:
                self._send_events(sub, target)
                return
            except (sqlite3.Error, OSError) as exc:
                LOG.error(
                    "webhook sender of job %s failed (%s); trying again in %d s",
                    sub.job_id,
                    exc,
                    SENDER_RETRY_S,
                )
                if self.clock.sleep(SENDER_RETRY_S, self._stop):
                    return

    def _send_events(self, sub: Subscriber, target: Target | None) -> None:
        if target is None:
            try:
                target = self.guard.check(sub.uri)
            except WebhookRefused as exc:
                self.store.end_subscriber(sub.id, "refused", str(exc))
                LOG.warning("webhook of job %s refused after restart: %s", sub.job_id, exc)
                return
        delivered = sub.delivered
        failing_since: float | None = None
        attempts = 0
        while not self._stop.is_set():
            events = self.store.events(sub.job_id)
            if delivered >= len(events):
                if events and events[-1].status in TERMINAL:
                    self.store.end_subscriber(sub.id, "done")
                    return
                with self._wake:
                    self._wake.wait(0.5)
                continue
            event = events[delivered]
            body = (
                WebhookProgress(Status=str(event.status), headers=sub.headers, File=event.file)
                .model_dump_json()
                .encode("utf-8")
            )
            result = self.poster.post(target, body)
            if result.ok:
                delivered += 1
                attempts, failing_since = 0, None
                self.store.delivered(sub.id, delivered)
                continue
            attempts += 1
            now = self.clock.monotonic()
            failing_since = now if failing_since is None else failing_since
            self._log_failure(sub, event, result, attempts)
            if not result.retry:
                self.store.end_subscriber(sub.id, "refused", result.detail)
                return
            if now - failing_since > self.settings.webhook_give_up_s:
                self.store.end_subscriber(sub.id, "abandoned", result.detail)
                LOG.error("webhook of job %s abandoned after %d attempts", sub.job_id, attempts)
                return
            self.store.subscriber_error(sub.id, result.detail)
            delay = min(
                self.settings.webhook_retry_cap,
                self.settings.webhook_retry_base * 2 ** (attempts - 1),
            )
            due = now + delay
            while self.clock.monotonic() < due:
                if self.clock.sleep(min(0.5, due - self.clock.monotonic()), self._stop):
                    return

    def _log_failure(
        self, sub: Subscriber, event: Event, result: PostResult, attempts: int
    ) -> None:
        level = logging.WARNING if attempts <= 2 or not result.retry else logging.DEBUG
        LOG.log(
            level,
            "webhook post of job %s status %s to host %s failed (attempt %d): %s",
            sub.job_id,
            event.name,
            urlsplit(sub.uri).hostname or "?",
            attempts,
            result.detail,
        )
