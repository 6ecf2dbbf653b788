"""A download of a study the box holds but has not yet completed (no PACS set).

Such a job does not fail at once with RequestFailed ("not on the box and no PACS is set"):
it waits, without taking a job slot, for the box to complete the study (the injected clock
drives the completion), then exports it whole and says it waited. The wait ends only once
the job itself has watched the study stay quiet past the completion check's time, so a jump
of the clock past that time does not end it before the check has looked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance
from afra.node.retrieve import COMPLETION_MARGIN_S
from medix.hub.server import HubServer
from medix.models import DownloadRequest
from tests.conftest import wait_for
from tests.dicomgen import dataset_bytes_hash, make_ct_series
from tests.fakes import FakeClock
from tests.node.conftest import BoxFactory, fetch, progress, statuses
from tests.node.test_downloads import HELD, request, send_and_complete, zip_hashes
from tests.peers import storescu

WAITING = "is still arriving at the box; waiting for it"
QUIET = "is quiet; the completion check should complete it"


def send_only(box: Appliance, files: list[Path]) -> str:
    """Into the box, and left there receiving: the clock does not move on."""
    storescu("127.0.0.1", box.dicom.port, files)
    uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    holding = box.index.holding(uid)
    assert holding.revisions == 1 and holding.receiving == 1
    return uid


def waiting_or_failed(
    box: Appliance, job_id: str, caplog: pytest.LogCaptureFixture, says: str = WAITING
) -> bool | None:
    """True once the job says `says`; an AssertionError showing the job if it ended."""
    job = box.downloads.job(job_id)
    assert job is not None
    assert job.state == "running", f"the job ended: {job.status} {job.error!r}"
    return any(says in r.getMessage() and job_id in r.getMessage() for r in caplog.records)


def grace(box: Appliance) -> float:
    """How long a job waits, once it finds a study quiet, for the completion check."""
    return box.config.study.scan_interval + COMPLETION_MARGIN_S


def test_a_study_still_arriving_is_exported_once_the_box_completes_it(
    hub: HubServer,
    node_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="afra.jobs")
    box = node_box(hub, downloads={"max_running": 1})
    complete = send_and_complete(
        box, clock, make_ct_series(tmp_path / "done", n=2, rows=32, cols=32, seed=91)
    )
    files = make_ct_series(tmp_path / "arriving", n=4, rows=32, cols=32, seed=92)
    arriving = send_only(box, files)

    waiting = box.downloads.submit(DownloadRequest.model_validate(request(hub, arriving, "u-wait")))
    wait_for(lambda: waiting_or_failed(box, waiting.job_id, caplog), what="the job to wait")

    # Waiting holds no job slot: with max_running 1 another download goes through meanwhile.
    box.downloads.submit(DownloadRequest.model_validate(request(hub, complete, "u-other")))
    wait_for(lambda: 7 in statuses(hub, "u-other"), what="the other download")
    assert box.downloads.job(waiting.job_id).state == "running"
    assert statuses(hub, "u-wait") == [0]

    # Past study.stable_age (5 on this box) and past the margin too: only the completion check
    # ends this wait, not the job's own reading of the clock.
    assert box.config.study.stable_age + grace(box) < 60
    clock.advance(60)

    wait_for(lambda: 7 in statuses(hub, "u-wait"), what="DownloadSaved")
    assert statuses(hub, "u-wait") == HELD
    job = box.downloads.job(waiting.job_id)
    assert job is not None and job.state == "saved"
    started = next(e for e in job.events if e.name == "ExportStarted")
    assert started.detail == f"4 instance(s); waited 60 s for {arriving} to complete on the box"
    url = progress(hub, "u-wait")[-1]["body"]["File"]
    assert zip_hashes(fetch(hub, url), tmp_path / "zip") == {dataset_bytes_hash(f) for f in files}


def test_a_study_that_never_completes_fails_saying_so_not_that_it_is_absent(
    hub: HubServer,
    node_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="afra.jobs")
    box = node_box(hub)
    box.completion.stop()  # nothing will complete it
    arriving = send_only(box, make_ct_series(tmp_path / "in", n=3, rows=32, cols=32, seed=93))

    accepted = box.downloads.submit(DownloadRequest.model_validate(request(hub, arriving, "u-nc")))
    wait_for(lambda: waiting_or_failed(box, accepted.job_id, caplog), what="the job to wait")

    # Quiet for study.stable_age, then no completion for the check's interval and the margin.
    clock.advance(box.config.study.stable_age)
    wait_for(lambda: waiting_or_failed(box, accepted.job_id, caplog, QUIET), what="it quiet")
    clock.advance(grace(box) + 1)

    wait_for(lambda: -4 in statuses(hub, "u-nc"), what="RequestFailed")
    assert statuses(hub, "u-nc") == [0, -4]
    job = box.downloads.job(accepted.job_id)
    assert job is not None and job.state == "failed"
    assert f"{arriving} is still arriving at the box (3 instance(s) so far)" in job.error
    assert "not on the box" not in job.error
    assert hub.files() == []  # no zip of part of a study


def test_a_clock_jump_past_the_due_time_leaves_the_wait_to_the_completion_check(
    hub: HubServer,
    node_box: BoxFactory,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The race behind a flaky ExportStarted: a job that read the clock after a jump past the
    due time, before the completion check had run, gave up. It then failed, or, when the check
    completed the study just before the export, exported it without saying that it waited."""
    caplog.set_level(logging.INFO, logger="afra.jobs")
    box = node_box(hub)
    box.completion.stop()  # the test runs the check, after the job has seen the jump
    files = make_ct_series(tmp_path / "in", n=3, rows=32, cols=32, seed=94)
    arriving = send_only(box, files)

    accepted = box.downloads.submit(DownloadRequest.model_validate(request(hub, arriving, "u-j")))
    wait_for(lambda: waiting_or_failed(box, accepted.job_id, caplog), what="the job to wait")

    clock.advance(600)  # far past stable_age + scan_interval + margin, as an NTP step
    wait_for(lambda: waiting_or_failed(box, accepted.job_id, caplog, QUIET), what="it quiet")
    assert box.completion.run_once()  # the check looks only now, and completes it

    wait_for(lambda: 7 in statuses(hub, "u-j"), what="DownloadSaved")
    assert statuses(hub, "u-j") == HELD
    job = box.downloads.job(accepted.job_id)
    assert job is not None
    started = next(e for e in job.events if e.name == "ExportStarted")
    assert started.detail == f"3 instance(s); waited 600 s for {arriving} to complete on the box"
