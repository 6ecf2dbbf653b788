"""The upload stream, the policy store, the bandwidth cap and retention, without a network."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance, build_appliance
from afra.dicom.receive import StoreRequest
from afra.store.index import StoredInstance
from afra.uplink import stream
from afra.uplink.policy import PolicyStore, in_window
from afra.uplink.worker import Throttle
from medix.models import Policy, Window
from tests.conftest import make_config
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock


@pytest.fixture
def box(tmp_path: Path, clock: FakeClock) -> Appliance:
    appliance = build_appliance(make_config(tmp_path / "box"), clock=clock)
    yield appliance  # type: ignore[misc]
    appliance.close()


def receive_series(box: Appliance, tmp_path: Path, n: int = 5) -> list[Path]:
    files = make_ct_series(tmp_path / "s", n=n, rows=32, cols=32)
    for path in files:
        tmp = box.spool.tmp_dir / path.name
        shutil.copyfile(path, tmp)
        ds = dcmread(path, stop_before_pixels=True)
        assert (
            box.receiver.store(
                tmp,
                StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, ds.SOPClassUID, "M", "127.0.0.1"),
            )
            == 0
        )
    return files


def test_parts_cover_the_stream_exactly(box: Appliance, tmp_path: Path) -> None:
    receive_series(box, tmp_path)
    [study] = box.index.studies()
    instances = box.index.upload_instances(study.id)
    plan = stream.plan(instances, part_size=7000)
    whole = b"".join(box.spool.absolute(i.path).read_bytes() for i in instances)
    assert plan.size == len(whole) and plan.parts == -(-len(whole) // 7000)
    assert b"".join(stream.read_part(box.spool, plan, n) for n in range(plan.parts)) == whole
    hashes, stream_hash = stream.hash_files(box.spool, instances)
    assert stream_hash == hashlib.sha256(whole).hexdigest()
    assert (
        hashes[instances[0].sop_instance_uid]
        == hashlib.sha256(box.spool.absolute(instances[0].path).read_bytes()).hexdigest()
    )


def test_codes_are_issued_without_a_hub(box: Appliance, clock: FakeClock, tmp_path: Path) -> None:
    receive_series(box, tmp_path)
    assert box.uplink.issue_codes() == 0  # not complete yet
    clock.advance(61)
    box.completion.run_once()
    assert box.uplink.issue_codes() == 1
    [study] = box.index.studies()
    assert study.state == "queued" and study.medis_code and len(study.medis_code) == 12


def test_policy_applies_whole_and_survives_restart(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policy.json")
    assert store.current.version == 0
    assert store.apply(Policy(version=2, retention_days=3))
    assert not store.apply(Policy(version=1, retention_days=9))  # older: ignored
    assert PolicyStore(tmp_path / "policy.json").current.retention_days == 3
    (tmp_path / "policy.json").write_text("{broken")
    assert PolicyStore(tmp_path / "policy.json").current.version == 0


def test_offpeak_windows_span_midnight() -> None:
    from datetime import datetime

    policy = Policy(version=1, offpeak_windows=(Window(start="22:00", end="06:00"),))
    at = lambda h, m: datetime(2026, 1, 5, h, m).timestamp()  # noqa: E731
    assert in_window(policy, at(23, 0)) and in_window(policy, at(5, 59))
    assert not in_window(policy, at(6, 0)) and not in_window(policy, at(12, 0))
    assert in_window(Policy(version=1), at(12, 0))


def test_throttle_spaces_parts_by_the_cap() -> None:
    clock = FakeClock()
    slept: list[float] = []
    clock.sleep = lambda seconds, stop=None: slept.append(seconds) or False  # type: ignore[method-assign]
    throttle = Throttle(clock)
    stop = threading.Event()
    throttle.take(125_000, 1000, stop)  # 1 Mbit at 1000 kb/s: one second of link
    throttle.take(125_000, 1000, stop)
    assert slept == [pytest.approx(1.0)]
    throttle.take(10, None, stop)  # no cap, no wait
    assert len(slept) == 1


def test_local_copies_kept_until_receipt_and_retention(
    box: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    receive_series(box, tmp_path, n=2)
    clock.advance(61)
    box.completion.run_once()
    box.uplink.issue_codes()
    [study] = box.index.studies()
    clock.advance(30 * 86400)
    assert box.uplink.purge_delivered() == 0  # never before the hub's receipt
    box.index.mark_delivered(study.id, "{}", clock.time())
    box.policy.apply(Policy(version=1, retention_days=7))
    clock.advance(6 * 86400)
    assert box.uplink.purge_delivered() == 0
    clock.advance(2 * 86400)
    assert box.uplink.purge_delivered() == 1
    assert not list((box.spool.root / "objects").rglob("*.dcm"))


def test_slip_from_the_command_line(box: Appliance, clock: FakeClock, tmp_path: Path) -> None:
    import subprocess
    import sys

    from afra.medis.codes import format_code

    receive_series(box, tmp_path, n=1)
    clock.advance(61)
    box.completion.run_once()
    box.uplink.issue_codes()
    [study] = box.index.studies()
    assert study.medis_code is not None
    config = tmp_path / "afra.toml"
    config.write_text(
        f'[box]\nname = "Tehran Imaging"\ndata_dir = "{box.spool.root}"\n'
        '[hub]\npatient_url = "https://hub.example/patient"\n'
    )
    out = tmp_path / "slip.html"
    typed = format_code(study.medis_code).lower()  # as a receptionist might type it
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "afra.cli",
            "--config",
            str(config),
            "slip",
            typed,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert format_code(study.medis_code) in html and "<svg" in html
    assert "https://hub.example/patient?code=" + study.medis_code in html
    assert "Tehran Imaging" in html
    missing = subprocess.run(
        [sys.executable, "-m", "afra.cli", "--config", str(config), "slip", "1.2.3.4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "no study" in missing.stderr


def complete_all(box: Appliance, clock: FakeClock) -> None:
    clock.advance(61)
    box.completion.run_once()
    box.uplink.issue_codes()


def test_part_size_is_fixed_at_first_registration(
    box: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    receive_series(box, tmp_path, n=1)
    [study] = box.index.studies()
    assert box.index.part_size(study.id, 65536) == 65536
    assert box.index.part_size(study.id, 2 * 1048576) == 65536  # a config change later


def test_revisions_of_a_study_share_its_code(
    box: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    files = make_ct_series(tmp_path / "rev", n=2, rows=16, cols=16)
    for path in files:
        tmp = box.spool.tmp_dir / path.name
        shutil.copyfile(path, tmp)
        ds = dcmread(path, stop_before_pixels=True)
        box.receiver.store(
            tmp, StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, ds.SOPClassUID, "M", "127.0.0.1")
        )
        complete_all(box, clock)  # each instance lands in a new revision
    codes = {s.medis_code for s in box.index.studies()}
    assert len(box.index.studies()) == 2 and len(codes) == 1 and None not in codes


def test_restart_after_purge_reports_nothing_missing(
    box: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    from afra.app import recover

    receive_series(box, tmp_path, n=2)
    complete_all(box, clock)
    [study] = box.index.studies()
    box.index.mark_delivered(study.id, "{}", clock.time())
    clock.advance(8 * 86400)
    assert box.uplink.purge_delivered() == 1
    report = recover(box.spool, box.index, clock)
    assert report.missing_files == [] and report.indexed_orphans == 0


def test_a_purge_a_stop_interrupted_is_finished_at_start(
    box: Appliance, clock: FakeClock, tmp_path: Path
) -> None:
    """The purge marks the study first and then removes its files: a stop between the two
    leaves files whose rows say purged. The next start removes them (the hub has them; it
    used to fail on their rows), and neither indexes them again nor calls them conflicts."""
    from afra.app import recover

    receive_series(box, tmp_path, n=2)
    complete_all(box, clock)
    [study] = box.index.studies()
    box.index.mark_delivered(study.id, "{}", clock.time())
    clock.advance(8 * 86400)
    left = [box.spool.absolute(i.path) for i in box.index.upload_instances(study.id)]
    kept = [p.read_bytes() for p in left]
    assert box.uplink.purge_delivered() == 1
    for path, data in zip(left, kept, strict=True):  # the stop came before these removals
        path.write_bytes(data)
    report = recover(box.spool, box.index, clock)
    assert report.purged_leftovers == 2
    assert (report.indexed_orphans, report.conflicting_orphans, report.unreadable_orphans) == (
        0,
        0,
        0,
    )
    assert not any(p.exists() for p in left)
    assert box.index.conflicts() == []


def test_a_copy_stored_by_another_process_is_never_replaced(
    box: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.dicomgen import dataset_bytes_hash, make_instance

    first = make_instance(
        tmp_path / "a.dcm", sop_instance_uid="1.2.3.99", study_uid="1.2.3.98", seed=1
    )
    second = make_instance(
        tmp_path / "b.dcm", sop_instance_uid="1.2.3.99", study_uid="1.2.3.98", seed=2
    )
    ds = dcmread(first, stop_before_pixels=True)

    def store(path: Path) -> int:
        tmp = box.spool.tmp_dir / f"rx-{path.name}"
        shutil.copyfile(path, tmp)
        return box.receiver.store(
            tmp, StoreRequest(ds.SOPClassUID, "1.2.3.99", ds.SOPClassUID, "M", "127.0.0.1")
        )

    # Another process (a CLI C-GET) stores its copy: it is under its name and indexed.
    assert store(first) == 0
    final = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, "1.2.3.99"))
    # The receiver looked the UID up a moment before that process's commit: the lookup
    # misses, the name is taken, and the receiver waits for the row.
    real_find = box.index.find_instance
    early = [False]

    def find(uid: str) -> StoredInstance | None:
        if early[0]:
            early[0] = False
            return None
        return real_find(uid)

    monkeypatch.setattr(box.index, "find_instance", find)
    for path in (second, first):  # a different copy first: it must not replace theirs
        early[0] = True
        assert store(path) == 0
        assert not early[0]
    assert dataset_bytes_hash(final) == dataset_bytes_hash(first)
    [conflict] = box.index.conflicts()
    assert dataset_bytes_hash(box.spool.absolute(conflict.path)) == dataset_bytes_hash(second)
