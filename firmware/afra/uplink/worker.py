"""The uplink worker: gives complete studies their Medis code and delivers them to the hub.

It runs on its own thread, apart from the receive path, and reads studies from the spool one
part (2 MiB) at a time. Each study revision goes: complete -> queued (code issued, with no hub
round-trip) -> uploading (registered) -> delivered (the hub's receipt, verified and stored).
Every step is idempotent on the hub's side, so after a cut or a restart the worker asks the
hub which parts it holds and sends only the rest (the parts go through
`afra.uplink.parts.PartUploader`, as a download's do). A failing study waits with the node's
backoff (`afra.retry`: capped, exponential, with jitter; its attempts are kept in the index, so
restarts do not reset it) and shows its attempts and last error; nothing is dropped. A
revision whose file is gone before the hub held its part is registered afresh under the
study's next revision number (`afra.uplink.lost`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from afra import __version__
from afra.audit import Actor, Audit, StudyRef
from afra.audit.events import MINOR_FAILURE, SUCCESS
from afra.clock import Clock
from afra.dicom.spool import Spool
from afra.medis.codes import CodeIssuer
from afra.retry import Backoff
from afra.store.index import Index, UploadInstance, UploadStudy
from afra.uplink import lost, stream
from afra.uplink.client import HubClient, HubError, HubRefused, HubUnavailable
from afra.uplink.parts import PARTS_IN_FLIGHT, PartUploader
from afra.uplink.policy import PolicyStore, in_window
from medix.models import (
    CommitRequest,
    Heartbeat,
    ManifestEntry,
    Patient,
    QueueStats,
    Receipt,
    StudyRegistration,
    UpdateReport,
)
from medix.receipts import verify_receipt

LOG = logging.getLogger("afra.uplink")


@dataclass(frozen=True)
class UplinkSettings:
    part_size: int = 2 * 1048576
    compression_level: int = 3
    retry_base: float = 5.0
    retry_cap: float = 900.0
    # A failed delivery's wait is taken off at random by up to this share: boxes that lost
    # the hub together do not all come back at the same moment.
    retry_jitter: float = 0.5
    heartbeat_interval: float = 60.0
    idle_interval: float = 2.0


class Stopping(Exception):
    """The worker was asked to stop in the middle of a delivery."""


def _dicom_date(value: str) -> str:
    """A DA value the protocol accepts (YYYYMMDD), or empty."""
    return value if len(value) == 8 and value.isdigit() else ""


class Throttle:
    """A bandwidth cap from policy: sending `n` bytes waits until the cap allows them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._free_at = 0.0
        self._lock = threading.Lock()

    def take(self, size: int, cap_kbps: int | None, stop: threading.Event) -> None:
        if not cap_kbps:
            return
        with self._lock:
            now = self.clock.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + size * 8 / (cap_kbps * 1000)
        if start > now:
            self.clock.sleep(start - now, stop)


class Uplink:
    def __init__(
        self,
        index: Index,
        spool: Spool,
        client: HubClient | None,
        *,
        policy: PolicyStore,
        clock: Clock,
        settings: UplinkSettings | None = None,
        codes: CodeIssuer | None = None,
        health: Callable[[], str] | None = None,
        on_activity: Callable[[], None] | None = None,
        software_version: str = __version__,
        update_report: Callable[[], UpdateReport | None] | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.audit = audit
        # The heartbeat reports health() (afra.health), the system's version and where its
        # last update stands; on_activity() flickers the panel's LED.
        self.health = health
        self.software_version = software_version
        self.update_report = update_report
        self.on_activity = on_activity
        self.index = index
        self.spool = spool
        self.client = client
        self.policy = policy
        self.clock = clock
        self.settings = settings or UplinkSettings()
        self.codes = codes or CodeIssuer()
        self.throttle = Throttle(clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = -1e18
        self.hub_reachable: bool | None = None
        # Long-lived senders: each keeps its own kept-alive connection to the hub.
        self._senders = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="part")

    # -- codes -----------------------------------------------------------------------------

    def issue_codes(self) -> int:
        """Give every complete study its Medis code (no hub needed); revisions share it."""
        issued = 0
        for study_id, study_uid in self.index.studies_without_code():
            code = self.index.code_of_study(study_uid) or self.codes.issue(self.index.code_taken)
            if self.index.set_medis_code(study_id, code):
                issued += 1
                self._audit_code(study_id, study_uid, code)
        return issued

    def _audit_code(self, study_id: int, study_uid: str, code: str) -> None:
        if self.audit is None:
            return
        row = self.index.upload_study(study_id)
        ref = StudyRef(study_uid, row.patient_id if row else "", row.patient_name if row else "")
        box = Actor(self.audit.events.source)
        self.audit.record(
            self.audit.events.code(self.clock.time(), box, ref, action="C", code_tail=code[-4:])
        )

    def _audit_upload(self, study: UploadStudy, outcome: int, why: str = "") -> None:
        if self.audit is None or self.client is None:
            return
        hub = Actor(self.client.identity.hub_url)
        ref = StudyRef(study.study_uid, study.patient_id, study.patient_name, study.instance_count)
        self.audit.record(
            self.audit.events.exported(
                self.clock.time(), hub, ref, what="upload to the hub", outcome=outcome, why=why
            )
        )

    # -- one pass --------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Issue codes, heartbeat when due, deliver one due study. True if work was done."""
        did = self.issue_codes() > 0
        if self.client is None:
            return did
        now = self.clock.time()
        if self.clock.monotonic() - self._last_heartbeat >= self.settings.heartbeat_interval:
            self.heartbeat()
        if not in_window(self.policy.current, now):
            return did
        study = self.index.next_upload(now)
        if study is None:
            return did
        self.deliver(study)
        return True

    def heartbeat_message(self) -> Heartbeat:
        """What the box tells the hub about itself: version, policy, health, queue."""
        count, oldest, size = self.index.queue_stats(self.clock.time())
        return Heartbeat(
            software_version=self.software_version,
            policy_version=self.policy.current.version,
            health=self.health() if self.health is not None else "healthy",
            queue=QueueStats(studies_waiting=count, oldest_waiting_s=oldest, bytes_waiting=size),
            update=self.update_report() if self.update_report is not None else None,
        )

    def heartbeat(self) -> None:
        assert self.client is not None
        self._last_heartbeat = self.clock.monotonic()
        try:
            answer = self.client.heartbeat(self.heartbeat_message())
        except HubError as exc:
            self._hub_down(exc)
            return
        self._hub_up()
        applied = answer.policy is not None and self.policy.apply(answer.policy)
        if applied and answer.policy is not None and self.audit is not None:
            hub = Actor(self.client.identity.hub_url)
            what = f"policy version {answer.policy.version} from the hub applied"
            self.audit.record(self.audit.events.configuration(self.clock.time(), hub, what))

    def deliver(self, study: UploadStudy) -> bool:
        """Take one study as far as it goes now; True when the receipt is stored."""
        assert self.client is not None
        try:
            receipt = self._deliver(study)
        except Stopping:
            return False  # not a failure: the box is shutting down, resume next start
        except lost.FilesLost as exc:
            # The row may carry a new revision number now: logs and audit name that one.
            now_study = self.index.upload_study(study.id) or study
            if not exc.mended:
                self._failed(now_study, exc)
            # Mended: due as it was, so the next pass tries it again at once. Each mended pass
            # took a kept copy (then removed from conflicts/) or found the file back.
            return False
        except Exception as exc:  # every failure is recorded and backed off, none blocks the queue
            self._failed(study, exc)
            return False
        self.index.mark_delivered(study.id, receipt.model_dump_json(), self.clock.time())
        self._audit_upload(study, SUCCESS)
        LOG.info(
            "study %s revision %d delivered: %d instance(s), receipt %s",
            study.study_uid,
            study.revision,
            study.instance_count,
            receipt.receipt_id,
        )
        return True

    def _deliver(self, study: UploadStudy) -> Receipt:
        assert self.client is not None and study.medis_code is not None
        instances = self.index.upload_instances(study.id)
        stream_hash = self.index.stream_sha256(study.id)
        if stream_hash is None or any(i.sha256 is None for i in instances):
            try:
                hashes, stream_hash = stream.hash_files(self.spool, instances)
            except FileNotFoundError as exc:
                if (gone := self._lost(study, instances)) is None:
                    raise
                raise gone from exc
            self.index.set_hashes(study.id, hashes, stream_hash)
            instances = self.index.upload_instances(study.id)
        # The part size is fixed at first registration: the hub refuses a changed one.
        plan = stream.plan(instances, self.index.part_size(study.id, self.settings.part_size))
        registration = self.client.register(
            StudyRegistration(
                study_uid=study.study_uid,
                revision=study.revision,
                medis_code=study.medis_code,
                patient=Patient(
                    name=study.patient_name,
                    patient_id=study.patient_id[:64],
                    birth_date=_dicom_date(study.patient_birth_date),
                    phone=study.patient_phone[:64],
                ),
                referring_physician=study.referring_physician,
                study_date=_dicom_date(study.study_date),
                study_description=study.study_description,
                accession_number=study.accession_number[:64],
                modalities=tuple(sorted({i.modality for i in instances if i.modality})),
                instance_count=len(instances),
                stream_size=plan.size,
                part_size=plan.part_size,
                parts=plan.parts,
            )
        )
        self._hub_up()
        if registration.receipt is not None:
            return self._verified(registration.receipt, study, stream_hash, len(instances))
        self.index.set_uploading(study.id, registration.upload_id)
        # A few parts in flight keep the link busy while the hub stores the previous ones;
        # each is read and compressed only when a sender is free (memory stays bounded).
        try:
            self._parts(registration.upload_id, plan, registration.received_parts).send_all(
                range(plan.parts)
            )
        except FileNotFoundError as exc:
            # A part the hub lacks needs a file that is gone (the hub holding every such part
            # would have made this read unnecessary).
            held = registration.received_parts
            if (gone := self._lost(study, instances, (plan, held))) is None:
                raise
            raise gone from exc
        manifest = CommitRequest(
            instances=tuple(
                ManifestEntry(
                    sop_instance_uid=p.instance.sop_instance_uid,
                    series_uid=p.instance.series_uid,
                    sop_class_uid=p.instance.sop_class_uid,
                    offset=p.offset,
                    size=p.instance.size,
                    sha256=p.instance.sha256 or "",
                )
                for p in plan.placed
            ),
            stream_sha256=stream_hash,
        )
        receipt = self.client.commit(registration.upload_id, manifest)
        return self._verified(receipt, study, stream_hash, len(instances))

    def _lost(
        self,
        study: UploadStudy,
        instances: Sequence[UploadInstance],
        registered: tuple[stream.StreamPlan, Sequence[int]] | None = None,
    ) -> lost.FilesLost | None:
        """Files of the revision are gone (uplink/lost.py). `registered`: its stream and the
        parts the hub held, when the read of a part failed; if a part the hub lacks needs a
        lost file, the revision is given a new revision number to be registered afresh. Then
        copies kept for the lost files take their places. What to raise, or None when no
        file the delivery needs is gone (restored meanwhile: an ordinary failure, tried
        again later)."""
        gone = lost.missing(self.spool, instances)
        if not gone or (registered is not None and not lost.needs_lost_part(*registered, gone)):
            return None
        if registered is not None:
            revision = self.index.register_afresh(study.id, study.revision)
            if revision is not None:
                why = (
                    f"{len(gone)} file(s) gone from the storage device before the hub held "
                    f"their parts: to be registered afresh as revision {revision}"
                )
                LOG.warning(
                    "study %s revision %d cannot be completed: %s (the hub's upload of revision "
                    "%d is left uncommitted)",
                    study.study_uid,
                    study.revision,
                    why,
                    study.revision,
                )
                self._audit_upload(study, MINOR_FAILURE, why)
        now = self.clock.time()
        back = 0
        for instance in gone:
            sender = lost.adopt_conflict(self.index, self.spool, study, instance, now)
            if sender is None:
                continue
            back += 1
            if sender:
                self._audit_upload(
                    study,
                    MINOR_FAILURE,
                    f"instance {instance.sop_instance_uid}: its file was lost; the copy "
                    f"{sender} sent again takes its place",
                )
        if back == len(gone):
            return lost.FilesLost(f"{back} lost file(s) back from copies sent again", mended=True)
        return lost.FilesLost(
            f"{len(gone) - back} file(s) of the study are gone from the storage device "
            "(send the study again from the PACS)",
            mended=False,
        )

    def _parts(self, upload_id: str, plan: stream.StreamPlan, held: Sequence[int]) -> PartUploader:
        """The study's stream in parts to its upload: read from the spool a part at a time,
        under the policy's bandwidth cap, each part the hub took flickering the LED."""
        client = self.client
        assert client is not None

        def put(number: int, body: bytes, sha256: str, encoding: str) -> None:
            client.put_part(upload_id, number, body, sha256=sha256, encoding=encoding)

        return PartUploader(
            put,
            lambda number: stream.read_part(self.spool, plan, number),
            pool=self._senders,
            compression_level=self.settings.compression_level,
            stop=self._stop,
            stopped=Stopping,
            held=held,
            throttle=lambda size: self.throttle.take(
                size, self.policy.current.bandwidth_cap_kbps, self._stop
            ),
            sent=self.on_activity,
        )

    def _verified(
        self, receipt: Receipt, study: UploadStudy, stream_hash: str, instance_count: int
    ) -> Receipt:
        assert self.client is not None
        ca_pem = self.client.identity.ca_path.read_text(encoding="ascii")
        if not verify_receipt(receipt, ca_pem):
            raise HubRefused("the hub's receipt is not signed by the enrolled CA", 502)
        expected = (
            study.study_uid,
            study.revision,
            study.medis_code,
            stream_hash,
            instance_count,
        )
        got = (
            receipt.study_uid,
            receipt.revision,
            receipt.medis_code,
            receipt.stream_sha256,
            receipt.instance_count,
        )
        if got != expected:
            raise HubRefused("the hub's receipt does not match what the box sent", 502)
        return receipt

    # -- failures -------------------------------------------------------------------------

    @property
    def backoff(self) -> Backoff:
        """A failed study's wait before its next try (the settings can be replaced)."""
        s = self.settings
        return Backoff(s.retry_base, s.retry_cap, s.retry_jitter)

    def _failed(self, study: UploadStudy, exc: Exception) -> None:
        attempts = study.attempts + 1
        delay = self.backoff.delay(attempts)
        self.index.record_failure(study.id, self.clock.time() + delay, str(exc))
        if attempts == 1 or attempts % 10 == 0:  # as often as the log says it
            self._audit_upload(study, MINOR_FAILURE, f"not delivered (attempt {attempts}): {exc}")
        if isinstance(exc, HubUnavailable):
            self._hub_down(exc)
        level = logging.WARNING if attempts == 1 or attempts % 10 == 0 else logging.DEBUG
        LOG.log(
            level,
            "study %s revision %d not delivered (attempt %d, next in %.0f s): %s",
            study.study_uid,
            study.revision,
            attempts,
            delay,
            exc,
        )

    def _hub_down(self, exc: Exception) -> None:
        if self.hub_reachable is not False:
            LOG.warning("hub unreachable: %s (the box keeps receiving; uploads will resume)", exc)
        self.hub_reachable = False

    def _hub_up(self) -> None:
        if self.hub_reachable is False:
            LOG.info("hub reachable again")
        self.hub_reachable = True

    # -- retention ------------------------------------------------------------------------

    def purge_delivered(self) -> int:
        """Delete local copies older than the policy's retention, only after a receipt."""
        now = self.clock.time()
        cutoff = now - self.policy.current.retention_days * 86400
        purged = 0
        for study_id in self.index.purgeable(cutoff):
            # Marked first: a duplicate arriving meanwhile is then "already delivered".
            self.index.mark_purged(study_id, now)
            for instance in self.index.upload_instances(study_id):
                self.spool.absolute(instance.path).unlink(missing_ok=True)
            purged += 1
        if purged:
            LOG.info("removed the local copies of %d delivered stud(ies)", purged)
        return purged

    # -- the thread -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether its thread runs (systemd's watchdog is fed only while it does)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._senders.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                self.purge_delivered()
            except Exception:
                LOG.exception("uplink pass failed")
                busy = False
            if not busy and self.clock.sleep(self.settings.idle_interval, self._stop):
                return
