"""Webhook delivery: each subscriber of a download job is posted the job's timeline in order.

A subscriber (a webhook target with the hub's headers, kept in `jobs.sqlite`) has its own
thread, so a slow or failing target delays only its own posts. The thread posts the job's
events one after another (WebhookProgress: the status, the headers, the file's URL once
saved), records after each how many have been delivered, and waits for the next event; it
ends once the job's last (terminal) status was posted. A failed post is tried again with the
node's backoff (`afra.retry`, from `downloads.webhook_retry_base` up to `webhook_retry_cap`)
until `downloads.webhook_give_up_s` have passed failing (the subscriber is then abandoned);
an answer not worth trying again (a redirect, most 4xx) ends it at once. After a restart every
active subscriber resumes where it stopped (its target checked again by the guard); a
repeated request revives one that had been given up on.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from urllib.parse import urlsplit

from afra.clock import Clock
from afra.config import DownloadSettings
from afra.node.jobstore import TERMINAL, Event, JobStore, Subscriber
from afra.node.webhook import PostResult, Target, WebhookGuard, WebhookPoster, WebhookRefused
from afra.retry import Backoff, sleep_until
from medix.models import WebhookProgress

LOG = logging.getLogger("afra.jobs")

SENDER_RETRY_S = 10


class WebhookDelivery:
    """The subscribers' sender threads. `stop` is the download manager's event: set, every
    sender ends; `notify()` after each new event rouses those waiting for one."""

    def __init__(
        self,
        settings: DownloadSettings,
        *,
        store: JobStore,
        guard: WebhookGuard,
        poster: WebhookPoster,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.guard = guard
        self.poster = poster
        self.clock = clock
        self._stop = stop
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._senders: dict[int, threading.Thread] = {}
        self._started = False

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.settings.webhook_retry_base, self.settings.webhook_retry_cap)

    def start(self) -> None:
        """Senders from now on, and one for every subscriber still active (after a restart)."""
        self._started = True
        for sub in self.store.subscribers(active=True):
            self.subscribe(sub)

    def notify(self) -> None:
        """Rouse the senders waiting for an event (a new one, or the stop)."""
        with self._wake:
            self._wake.notify_all()

    def join(self) -> None:
        """Once `stop` is set: wait for the senders to end (30 s each at most), and start
        none until the next start()."""
        self.notify()
        with self._lock:
            threads = list(self._senders.values())
        for thread in threads:
            thread.join(timeout=30)
        self._senders.clear()
        self._started = False

    def subscribe(self, sub: Subscriber, target: Target | None = None) -> None:
        """Start the subscriber's sender, unless one runs or the box is not running
        (`target`: already checked by the guard, for a request just accepted)."""
        if not self._started or self._stop.is_set():
            return
        with self._lock:
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
            # Waited until the clock has moved that far (the job's events meanwhile wait).
            if sleep_until(self.clock, now + self.backoff.delay(attempts), self._stop):
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
