"""Study downloads the hub asks for, against the reference hub (and Orthanc as the PACS)."""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from afra.app import Appliance
from afra.dicom.receive import StoreRequest
from afra.dicom.scu import RetrieveResult
from medix.hub.server import HubServer
from medix.models import DownloadRequest
from tests.conftest import wait_for
from tests.dicomgen import dataset_bytes_hash, make_ct_series, sha256_of
from tests.fakes import FakeClock
from tests.node.conftest import BoxFactory, fetch, progress, statuses
from tests.peers import Orthanc, storescu

HELD = [0, 2, 3, 4, 5, 6, 7]
RETRIEVED = [0, 1, 2, 3, 4, 5, 6, 7]


def request(
    hub: HubServer, uid: str | list[str], userid: str = "u-1", **extra: Any
) -> dict[str, Any]:
    return {
        "StudyInstanceUID": uid,
        "WebhookUri": hub.webhook_url(),
        "WebhookHeaders": {"authorization": "PACS-TOKEN", "userid": userid, "kcode": "K1"},
        **extra,
    }


def send_and_complete(box: Appliance, clock: FakeClock, files: list[Path]) -> str:
    storescu("127.0.0.1", box.dicom.port, files)
    study_uid = box.index.studies()[0].study_uid
    clock.advance(60)
    wait_for(lambda: box.index.holding(study_uid).whole, what="the study to be complete")
    return study_uid


def zip_hashes(data: bytes, tmp: Path) -> set[str]:
    """Open the zip as a viewer would: through its DICOMDIR, with pydicom's FileSet."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(tmp)
    fileset = FileSet(tmp / "DICOMDIR")
    try:
        return {dataset_bytes_hash(Path(instance.path)) for instance in fileset}
    finally:
        fileset._stage["t"].cleanup()  # pydicom keeps a staging folder per FileSet


def node_id(hub: HubServer) -> str:
    return str(hub.nodes()[0]["id"])


def test_download_of_a_held_study_reaches_the_hub_as_a_viewer_zip(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = node_box(hub)
    files = make_ct_series(tmp_path / "in", n=6, rows=64, cols=64)
    study_uid = send_and_complete(box, clock, files)

    hub.queue_command(node_id(hub), "download", request(hub, study_uid))

    wait_for(lambda: 7 in statuses(hub, "u-1"), what="DownloadSaved")
    assert statuses(hub, "u-1") == HELD
    posts = progress(hub, "u-1")
    assert all(p["verified"] for p in posts)  # signed with the enrolment's key
    assert posts[0]["body"]["headers"] == {
        "authorization": "PACS-TOKEN",
        "userid": "u-1",
        "kcode": "K1",
    }
    url = posts[-1]["body"]["File"]
    assert url.startswith(hub.url)
    assert zip_hashes(fetch(hub, url), tmp_path / "zip") == {dataset_bytes_hash(f) for f in files}
    job = box.downloads.jobs()[0]
    assert [e.status for e in job.events] == HELD and job.state == "saved"
    on_disk = {sha256_of(box.spool.absolute(i.path)) for i in box.index.held_instances(study_uid)}
    with zipfile.ZipFile(io.BytesIO(fetch(hub, url))) as archive:
        zipped = {
            hashlib.sha256(archive.read(n)).hexdigest()
            for n in archive.namelist()
            if n != "DICOMDIR"
        }
    assert zipped == on_disk  # the stored files themselves, byte for byte
    assert box.audit is not None  # the study left the box: the audit trail says to whom
    [export] = [
        e
        for e in box.audit.trail.after(0)
        if e.objects and e.objects[0].details.get("what", "").startswith("download job")
    ]
    assert export.event.code == "110106" and export.outcome == 0
    assert export.objects[0].id == study_uid


def pacs_box(node_box: BoxFactory, hub: HubServer, orthanc: Orthanc, box_port: int) -> Appliance:
    return node_box(
        hub,
        dicom={"port": box_port, "ae_title": "AFRA"},
        pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
    )


@pytest.mark.peers
def test_download_of_a_study_only_the_pacs_holds_moves_it_into_the_job_not_the_store(
    hub: HubServer, node_box: BoxFactory, orthanc: Orthanc, box_port: int, tmp_path: Path
) -> None:
    box = pacs_box(node_box, hub, orthanc, box_port)
    files = make_ct_series(tmp_path / "pacs", n=5, rows=64, cols=64, seed=41)
    orthanc.upload_many(files)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)

    accepted = box.downloads.submit(
        DownloadRequest.model_validate(request(hub, study_uid, "u-pacs"))
    )
    assert not accepted.joined

    wait_for(lambda: 7 in statuses(hub, "u-pacs"), what="DownloadSaved")
    assert statuses(hub, "u-pacs") == RETRIEVED
    url = progress(hub, "u-pacs")[-1]["body"]["File"]
    assert zip_hashes(fetch(hub, url), tmp_path / "zip") == {dataset_bytes_hash(f) for f in files}
    # An export, not an intake: no study in the index, no Medis code, nothing left behind.
    assert box.index.holding(study_uid).revisions == 0
    assert box.audit is not None  # the retrieve from the PACS is audited, with its count
    [fetched] = [e for e in box.audit.trail.after(0) if e.event.code == "110107"]
    assert fetched.participants[1].user_id == orthanc.aet
    assert fetched.objects[0].details["instances"] == "5"
    assert not any((box.config.box.data_dir / "jobs").iterdir())


@pytest.mark.peers
def test_download_of_a_study_nobody_holds_reports_request_failed(
    hub: HubServer, node_box: BoxFactory, orthanc: Orthanc, box_port: int
) -> None:
    box = pacs_box(node_box, hub, orthanc, box_port)
    box.downloads.submit(DownloadRequest.model_validate(request(hub, "1.2.3.999.1", "u-none")))

    wait_for(lambda: -4 in statuses(hub, "u-none"), what="RequestFailed")
    assert statuses(hub, "u-none") == [0, 1, -4]
    job = box.downloads.jobs()[0]
    assert job.state == "failed" and "sent nothing" in job.error
    assert hub.files() == []


@pytest.mark.peers
def test_a_patients_studies_merge_into_one_zip(
    hub: HubServer,
    node_box: BoxFactory,
    orthanc: Orthanc,
    box_port: int,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    box = pacs_box(node_box, hub, orthanc, box_port)
    held = make_ct_series(tmp_path / "held", n=3, rows=64, cols=64, seed=51, patient_id="PMERGE")
    send_and_complete(box, clock, held)
    remote = make_ct_series(
        tmp_path / "remote", n=2, rows=64, cols=64, seed=52, patient_id="PMERGE"
    )
    orthanc.upload_many(remote)

    body = request(hub, "", "u-merge")
    del body["StudyInstanceUID"]
    box.downloads.submit(DownloadRequest.model_validate({**body, "PatientID": "PMERGE"}))

    wait_for(lambda: 7 in statuses(hub, "u-merge"), what="DownloadSaved")
    assert statuses(hub, "u-merge") == [0, 8, 1, 2, 3, 4, 5, 10, 6, 7]
    url = progress(hub, "u-merge")[-1]["body"]["File"]
    assert zip_hashes(fetch(hub, url), tmp_path / "zip") == {
        dataset_bytes_hash(f) for f in held + remote
    }


def test_a_failing_webhook_is_retried_and_statuses_arrive_in_order(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = node_box(hub)
    study_uid = send_and_complete(
        box, clock, make_ct_series(tmp_path / "in", n=3, rows=64, cols=64)
    )
    hub.fail_webhooks(2)

    box.downloads.submit(DownloadRequest.model_validate(request(hub, study_uid, "u-retry")))

    wait_for(
        lambda: 7 in statuses(hub, "u-retry"),
        what="DownloadSaved after two failures",
        tick=lambda: clock.advance(1.0),
    )
    assert statuses(hub, "u-retry") == HELD  # each once, in order
    failed = [w for w in hub.webhooks() if w["outcome"] == "failed"]
    assert len(failed) == 2 and all(w["body"]["Status"] == "0" for w in failed)


@pytest.mark.parametrize(
    ("uri_of", "allow_hosts", "why"),
    [
        (lambda hub: "https://127.0.0.1:9/webhook", [], "not the enrolled hub's"),
        (lambda hub: "https://127.0.0.1/webhook", ["127.0.0.1"], "loopback"),
        (lambda hub: "https://169.254.169.254/latest/meta-data", ["169.254.169.254"], "link-local"),
        (lambda hub: hub.webhook_url().replace("https://", "http://"), [], "must use https"),
        (lambda hub: "https://user:pw@127.0.0.2/x", [], "credentials"),
    ],
)
def test_webhook_targets_inward_are_refused_before_any_work(
    hub: HubServer,
    node_box: BoxFactory,
    uri_of: Any,
    allow_hosts: list[str],
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = node_box(hub, downloads={"webhook_hosts": allow_hosts})
    args = {**request(hub, "1.2.3.4", "u-ssrf"), "WebhookUri": uri_of(hub)}
    command = hub.queue_command(node_id(hub), "download", args)

    done = wait_for(
        lambda: next(
            (
                c
                for c in hub.hub.node_commands(node_id(hub)).commands
                if c.id == command and c.ok is not None
            ),
            None,
        ),
        what="the command's result",
    )
    assert done.ok is False and why in done.error
    assert box.downloads.jobs() == []
    assert statuses(hub, "u-ssrf") == []
    assert any(
        "download request refused" in r.getMessage() and why in r.getMessage()
        for r in caplog.records
    )


def test_a_redirecting_webhook_is_not_followed(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = node_box(hub)
    study_uid = send_and_complete(
        box, clock, make_ct_series(tmp_path / "in", n=2, rows=64, cols=64)
    )
    args = {**request(hub, study_uid, "u-redirect"), "WebhookUri": hub.webhook_redirect_url()}

    accepted = box.downloads.submit(DownloadRequest.model_validate(args))

    wait_for(lambda: box.downloads.job(accepted.job_id).state == "saved", what="the job")
    [sub] = box.downloads.store.subscribers(accepted.job_id)
    wait_for(lambda: box.downloads.store.subscribers(accepted.job_id)[0].state != "active")
    [sub] = box.downloads.store.subscribers(accepted.job_id)
    assert sub.state == "refused"
    row = box.downloads.store._db.execute(
        "SELECT last_error FROM subscribers WHERE id = ?", (sub.id,)
    ).fetchone()
    assert "redirect" in row[0] and "not followed" in row[0]
    assert statuses(hub, "u-redirect") == []  # nothing reached any webhook


def test_two_identical_requests_at_once_share_one_job(
    hub: HubServer, node_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = node_box(hub)
    study_uid = send_and_complete(
        box, clock, make_ct_series(tmp_path / "in", n=3, rows=64, cols=64)
    )
    req = DownloadRequest.model_validate(request(hub, study_uid, "u-twice"))
    answers: list[Any] = []
    barrier = threading.Barrier(2)

    def ask() -> None:
        barrier.wait()
        answers.append(box.downloads.submit(req))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len({a.job_id for a in answers}) == 1
    assert sorted(a.joined for a in answers) == [False, True]
    wait_for(lambda: 7 in statuses(hub, "u-twice"), what="DownloadSaved")
    assert statuses(hub, "u-twice") == HELD  # one job, one subscriber, one timeline
    assert len(hub.files()) == 1


class PartialPacs:
    """A PACS that sends two instances of a study and then fails the rest of the C-MOVE."""

    def __init__(self, files: list[Path], spool_tmp: Path, ae_title: str) -> None:
        self.files = files
        self.spool_tmp = spool_tmp
        self.local = type("Local", (), {"ae_title": ae_title})()

    def retrieve(self, study_uid: str, *, msg_id: int, sink: Any) -> RetrieveResult:
        for n, source in enumerate(self.files[:2]):
            tmp = self.spool_tmp / f"partial-{n}.dcm"
            shutil.copyfile(source, tmp)
            ds = dcmread(source, stop_before_pixels=True)
            request = StoreRequest(
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                context_abstract_syntax=str(ds.SOPClassUID),
                calling_ae="PACS",
                peer_address="127.0.0.1",
            )
            assert sink.store(tmp, request) == 0
        # The association dropped: a failure status, and no count of failures with it.
        return RetrieveResult(method="C-MOVE", status=0xC000, completed=2, failed=0)

    def find(self, level: str, keys: dict[str, str]) -> list[Any]:
        return []


def test_a_retrieve_the_pacs_fails_half_way_is_request_failed_not_a_partial_zip(
    hub: HubServer, node_box: BoxFactory, tmp_path: Path
) -> None:
    box = node_box(hub)
    files = make_ct_series(tmp_path / "pacs", n=5, rows=32, cols=32, seed=81)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    box.downloads.pacs = PartialPacs(files, box.spool.tmp_dir, box.config.dicom.ae_title)  # type: ignore[assignment]

    box.downloads.submit(DownloadRequest.model_validate(request(hub, study_uid, "u-partial")))

    wait_for(lambda: -4 in statuses(hub, "u-partial"), what="RequestFailed")
    assert statuses(hub, "u-partial") == [0, 1, -4]
    assert "status 0xc000" in box.downloads.jobs()[0].error
    assert hub.files() == []  # no zip of 2 out of 5 ever reached the hub
    assert box.index.holding(study_uid).revisions == 0
