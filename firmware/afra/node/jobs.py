"""Study downloads the hub asks for: DownloadManager, a job per request and its timeline.

A request (HTTP API or command) is checked, then answered at once with a job id; the job runs
on its own thread (at most `downloads.max_running` at a time):

    ProcessStarted 0 [MergeStarted 8] -> per study not on the box: RequestSent 1 (C-MOVE,
    C-GET fallback) or RequestFailed -4 -> ExportStarted 2 (or ExportFailed -3) ->
    CompressStarted 3 -> CompressFinished 4 -> ExportCompleted 5 [MergeCompleted 10, or
    MergeFailed -1] -> DownloadStarted 6 -> DownloadSaved 7 (File = the hub's URL) or
    DownloadFailed -2.

The statuses keep that order, but the work overlaps: instances go into the zip as they
arrive from the PACS, and the zip's parts go to the hub while it is still being written.
The manager owns that order and the job's life: accepting (a repeated request for the same
studies and user joins the running job, its new webhook target added as a subscriber and
sent the timeline from the start), running, the audit record of what was exported, and the
start after a restart (a job cut by it is ended with the failure status of the step it was
in, so nobody waits for it forever; its files are removed). The rest is in its parts:

    node/jobstore.py   jobs.sqlite: the jobs, their timelines, their webhook subscribers
    node/retrieve.py   the studies from the box or the PACS (and waiting for one the box
                       is still receiving)
    node/export.py     the zip (StudyZip) and its upload to the hub (FileUploader)
    node/delivery.py   each subscriber's thread posting the timeline in order, with retry
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import shutil
import threading
from pathlib import Path

from afra.audit import Actor, Audit, StudyRef
from afra.audit.events import SERIOUS_FAILURE, SUCCESS
from afra.clock import Clock
from afra.config import DownloadSettings, StudySettings
from afra.datadir import DataDir
from afra.dicom.receive import Receiver
from afra.dicom.scu import PacsClient
from afra.dicom.spool import Spool
from afra.errors import AfraError
from afra.node.delivery import WebhookDelivery
from afra.node.export import ExportError, FileUploader, StudyZip, UploadError
from afra.node.jobstore import TERMINAL, Job, JobStore
from afra.node.retrieve import PatientListingError, Retriever
from afra.node.webhook import WebhookGuard, WebhookPoster, WebhookRefused
from afra.store.index import Index
from afra.uplink.client import HubClient, HubError
from medix.models import DownloadAccepted, DownloadRequest, DownloadStatus

LOG = logging.getLogger("afra.jobs")

S = DownloadStatus


class DownloadManager:
    """Accepts download requests and runs their jobs (see the module's docstring)."""

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
        self.folder = DataDir(data_dir).jobs
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(DataDir(data_dir).jobs_db)
        self.index = index
        self.hub = hub
        self.guard = guard
        self.clock = clock
        self.part_size = part_size
        self.compression_level = compression_level
        self.zip_level = zip_level
        self._accept_lock = threading.Lock()
        self._slots = threading.Semaphore(settings.max_running)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # When a study still arriving will be complete: the box's `study` section.
        self.retriever = Retriever(
            index=index,
            spool=spool,
            receiver=receiver,
            pacs=pacs,
            clock=clock,
            stop=self._stop,
            study=study or StudySettings(),
            min_free_bytes=min_free_bytes,
            audit=audit,
        )
        self.delivery = WebhookDelivery(
            settings, store=self.store, guard=guard, poster=poster, clock=clock, stop=self._stop
        )

    @property
    def pacs(self) -> PacsClient | None:
        """Where studies the box lacks are retrieved from (replaced with the DICOM settings)."""
        return self.retriever.pacs

    @pacs.setter
    def pacs(self, pacs: PacsClient | None) -> None:
        self.retriever.pacs = pacs

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """End jobs a restart cut short, and resume their undelivered webhook posts."""
        self._stop.clear()
        for job in self.store.running():
            self._cut_short(job)
        for leftover in self.folder.iterdir():  # a crash between a job's end and its cleanup
            shutil.rmtree(leftover, ignore_errors=True)
            if leftover.exists():
                LOG.error("could not remove %s (a download's files); remove it by hand", leftover)
        self.store.forget_before(self.clock.time() - self.settings.keep_jobs_days * 86400)
        self.delivery.start()

    def stop(self) -> None:
        self._stop.set()
        self.delivery.notify()
        with self._accept_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=30)
        self._threads.clear()
        self.delivery.join()

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
                    self.delivery.subscribe(sub, target)
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
        self.delivery.notify()

    def _run(self, job_id: str, subject: str) -> None:
        try:
            waited = self.retriever.await_completion(job_id, subject)  # before taking a job slot
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

    def _work(self, job_id: str, subject: str, folder: Path, waited: list[str]) -> None:
        merge = subject.startswith(("patient:", "studies:"))
        if merge:
            self._emit(job_id, S.MergeStarted)
        try:
            studies = self.retriever.studies(subject)
        except PatientListingError as exc:
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
        emit = functools.partial(self._emit, job_id)
        try:
            for uid in studies:
                if not self.retriever.gather(job_id, uid, study_zip, folder, emit):
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
