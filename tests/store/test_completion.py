"""When a study is whole: stable age, the PACS's own counts, revisions for late instances."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance, build_appliance
from afra.dicom.receive import StoreRequest
from afra.errors import AssociationFailedError
from tests.conftest import make_config
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock


class FakePacsCounts:
    """What the PACS would answer to C-FIND NumberOfStudyRelatedInstances."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.fail = False
        self.asked: list[str] = []

    def study_instance_count(self, study_uid: str) -> int | None:
        self.asked.append(study_uid)
        if self.fail:
            raise AssociationFailedError("PACS down")
        return self.count


@pytest.fixture
def unstarted(tmp_path: Path, clock: FakeClock) -> Iterator[Appliance]:
    box = build_appliance(make_config(tmp_path / "box"), clock=clock)
    yield box
    box.close()


def receive(box: Appliance, path: Path) -> int:
    """What the SCP does with a received file, without the network."""
    tmp = box.spool.tmp_dir / f"rx-{path.name}"
    shutil.copyfile(path, tmp)
    ds = dcmread(path, stop_before_pixels=True)
    return box.receiver.store(
        tmp,
        StoreRequest(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            context_abstract_syntax=ds.SOPClassUID,
            calling_ae="MODALITY",
            peer_address="127.0.0.1",
        ),
    )


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "series", n=4, rows=16, cols=16)


def test_complete_after_stable_age(
    unstarted: Appliance, clock: FakeClock, series: list[Path]
) -> None:
    for path in series[:3]:
        assert receive(unstarted, path) == 0
    clock.advance(59)
    assert unstarted.completion.run_once() == []
    assert receive(unstarted, series[3]) == 0  # a new instance restarts the wait
    clock.advance(59)
    assert unstarted.completion.run_once() == []
    clock.advance(2)
    [done] = unstarted.completion.run_once()
    [study] = unstarted.index.studies()
    assert (study.id, study.state, study.instance_count) == (done, "complete", 4)


def test_late_instance_opens_revision_with_only_new_instances(
    unstarted: Appliance, clock: FakeClock, series: list[Path]
) -> None:
    for path in series[:2]:
        receive(unstarted, path)
    clock.advance(61)
    unstarted.completion.run_once()
    assert receive(unstarted, series[0]) == 0  # a duplicate opens nothing
    assert len(unstarted.index.studies()) == 1
    receive(unstarted, series[2])
    receive(unstarted, series[3])
    rows = sorted(unstarted.index.studies(), key=lambda s: s.revision)
    assert [(r.revision, r.state, r.instance_count) for r in rows] == [
        (0, "complete", 2),
        (1, "received", 2),
    ]
    first = {i.sop_instance_uid for i in unstarted.index.study_instances(rows[0].id)}
    second = {i.sop_instance_uid for i in unstarted.index.study_instances(rows[1].id)}
    assert not first & second and len(first | second) == 4
    clock.advance(61)
    unstarted.completion.run_once()
    assert all(s.state == "complete" for s in unstarted.index.studies())


def test_waits_for_instances_the_pacs_reports(
    unstarted: Appliance, clock: FakeClock, series: list[Path]
) -> None:
    pacs = FakePacsCounts(4)
    unstarted.completion.pacs = pacs
    for path in series[:3]:
        receive(unstarted, path)
    clock.advance(61)
    assert unstarted.completion.run_once() == []
    [study] = unstarted.index.studies()
    assert study.state == "received" and study.expected_count == 4
    assert "waiting for 1 instance" in unstarted.index.studies()[0].state_reason
    receive(unstarted, series[3])
    clock.advance(61)
    assert len(unstarted.completion.run_once()) == 1
    assert unstarted.index.studies()[0].state_reason == ""


def test_gives_up_waiting_after_the_bound(
    unstarted: Appliance, clock: FakeClock, series: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    unstarted.completion.pacs = FakePacsCounts(10)
    for path in series:
        receive(unstarted, path)
    clock.advance(61)
    unstarted.completion.run_once()
    clock.advance(299)
    assert unstarted.completion.run_once() == []
    clock.advance(2)
    with caplog.at_level(logging.WARNING, logger="afra.studies"):
        assert len(unstarted.completion.run_once()) == 1
    [study] = unstarted.index.studies()
    assert study.state == "complete" and "4 of 10" in study.state_reason
    assert "4 of 10" in caplog.text


def test_pacs_down_falls_back_to_stable_age(
    unstarted: Appliance, clock: FakeClock, series: list[Path]
) -> None:
    pacs = FakePacsCounts(10)
    pacs.fail = True
    unstarted.completion.pacs = pacs
    receive(unstarted, series[0])
    clock.advance(61)
    assert len(unstarted.completion.run_once()) == 1
    assert pacs.asked


def test_completion_survives_restart(tmp_path: Path, clock: FakeClock, series: list[Path]) -> None:
    config = make_config(tmp_path / "box")
    box = build_appliance(config, clock=clock)
    receive(box, series[0])
    box.close()
    clock.advance(61)
    box = build_appliance(config, clock=clock)
    try:
        assert len(box.completion.run_once()) == 1
    finally:
        box.close()
