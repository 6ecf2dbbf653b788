"""Deciding when a study is whole.

A study revision in state `received` becomes `complete` once no instance has arrived for
`study.stable_age` seconds (as Orthanc's StableAge). When a PACS is configured, its
NumberOfStudyRelatedInstances is compared with what the box holds, and the box waits up to
`study.pacs_count_wait` more seconds for what is missing before completing anyway.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from afra.audit import Actor, Audit, StudyRef
from afra.clock import Clock
from afra.config import StudySettings
from afra.errors import AfraError
from afra.store.index import DueStudy, Index

LOG = logging.getLogger("afra.studies")


class InstanceCounter(Protocol):
    def study_instance_count(self, study_uid: str) -> int | None: ...


class StudyCompletion:
    """Moves stable studies from `received` to `complete`; runs in its own thread."""

    def __init__(
        self,
        index: Index,
        settings: StudySettings,
        *,
        clock: Clock,
        pacs: InstanceCounter | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.audit = audit
        self.index = index
        self.settings = settings
        self.clock = clock
        self.pacs = pacs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[int]:
        """Check every due study once; return the ids completed."""
        now = self.clock.time()
        done = []
        for study in self.index.due_studies(now - self.settings.stable_age):
            if self._decide(study, now):
                done.append(study.id)
        return done

    def _decide(self, study: DueStudy, now: float) -> bool:
        expected: int | None = None
        if self.pacs is not None:
            try:
                expected = self.pacs.study_instance_count(study.study_uid)
            except (AfraError, OSError, RuntimeError) as exc:
                LOG.warning("could not ask the PACS about study %s: %s", study.study_uid, exc)
        held = self.index.study_total(study.study_uid) if expected is not None else 0
        if expected is not None and held < expected:
            waited_since = study.waiting_since if study.waiting_since is not None else now
            if now - waited_since < self.settings.pacs_count_wait:
                reason = f"waiting for {expected - held} instance(s) the PACS reports"
                if study.waiting_since is None:
                    LOG.info("study %s: %s", study.study_uid, reason)
                self.index.mark_waiting(study.id, now, expected, reason)
                return False
            reason = f"completed with {held} of {expected} instances the PACS reports"
            LOG.warning("study %s: %s (waited %.0f s)", study.study_uid, reason, now - waited_since)
        else:
            reason = ""
        quiet_since = now - self.settings.stable_age
        if self.index.mark_complete(study.id, now, expected, reason, quiet_since=quiet_since):
            LOG.info(
                "study %s revision %d complete: %d instance(s)",
                study.study_uid,
                study.revision,
                study.instance_count,
            )
            self._audit(study)
            return True
        return False

    def _audit(self, study: DueStudy) -> None:
        """The instances received, one record per sender: made when the study is whole, so a
        box that dies first still records them (the study completes after the restart)."""
        if self.audit is None:
            return
        row = self.index.upload_study(study.id)
        for ae, count in self.index.senders(study.id):
            ref = StudyRef(
                study.study_uid,
                row.patient_id if row else "",
                row.patient_name if row else "",
                count,
            )
            self.audit.record(
                self.audit.events.received(
                    study.last_received_at, Actor(ae or "(recovered from the spool)"), ref
                )
            )

    @property
    def alive(self) -> bool:
        """Whether its thread runs (systemd's watchdog is fed only while it does)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="study-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                LOG.exception("study completion check failed")
            if self.clock.sleep(self.settings.scan_interval, self._stop):
                return
