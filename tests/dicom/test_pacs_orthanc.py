"""Orthanc as the center's PACS: it sends to the box, answers its C-FIND, C-MOVE and C-GET."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from afra.app import Appliance
from afra.dicom.scu import PacsClient
from tests.conftest import BoxFactory
from tests.dicomgen import dataset_bytes_hash, make_ct_series
from tests.peers import Orthanc

LOOPBACK = "127.0.0.1"


@pytest.fixture
def pacs_box(make_box: BoxFactory, box_port: int, orthanc: Orthanc) -> Appliance:
    """The box, admitting only Orthanc, with Orthanc configured as its PACS."""
    return make_box(
        dicom={
            "port": box_port,
            "allow_any_peer": False,
            "peers": [{"ae_title": "ORTHANC", "host": "127.0.0.1"}],
        },
        pacs={"ae_title": orthanc.aet, "host": LOOPBACK, "port": orthanc.dicom_port},
    )


def upload_study(orthanc: Orthanc, out: Path, n: int = 6) -> tuple[str, list[Path]]:
    files = make_ct_series(out, n=n, rows=32, cols=32, patient_id=out.name)
    orthanc.upload_many(files)
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


def assert_held_byte_for_byte(box: Appliance, files: list[Path]) -> None:
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        kept = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        assert dataset_bytes_hash(kept) == dataset_bytes_hash(sent)


def orthanc_study_id(orthanc: Orthanc, study_uid: str) -> str:
    for orthanc_id in orthanc.studies():
        if orthanc.get(f"/studies/{orthanc_id}")["MainDicomTags"]["StudyInstanceUID"] == study_uid:
            return orthanc_id
    raise AssertionError(f"Orthanc does not hold study {study_uid}")


def test_orthanc_sends_study_through_rest(
    pacs_box: Appliance, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid, files = upload_study(orthanc, tmp_path / "PUSH")
    orthanc.store_to("AFRA", orthanc_study_id(orthanc, study_uid))
    [study] = [s for s in pacs_box.index.studies() if s.study_uid == study_uid]
    assert study.instance_count == len(files)
    assert_held_byte_for_byte(pacs_box, files)


def test_echo_and_find(pacs_box: Appliance, orthanc: Orthanc, tmp_path: Path) -> None:
    assert pacs_box.pacs is not None
    assert pacs_box.pacs.echo() == 0
    study_uid, _files = upload_study(orthanc, tmp_path / "FIND", n=5)
    [match] = pacs_box.pacs.find("STUDY", {"PatientID": "FIND"})
    assert match.StudyInstanceUID == study_uid
    assert int(match.NumberOfStudyRelatedInstances) == 5
    assert pacs_box.pacs.study_instance_count(study_uid) == 5
    series = pacs_box.pacs.find("SERIES", {"StudyInstanceUID": study_uid})
    assert len(series) == 1 and int(series[0].NumberOfSeriesRelatedInstances) == 5
    assert pacs_box.pacs.find("STUDY", {"PatientID": "NOBODY"}) == []


def test_move_brings_study_to_the_box(
    pacs_box: Appliance, orthanc: Orthanc, tmp_path: Path
) -> None:
    assert pacs_box.pacs is not None
    study_uid, files = upload_study(orthanc, tmp_path / "MOVE")
    result = pacs_box.pacs.move(study_uid)
    assert result.ok and result.completed == len(files)
    assert_held_byte_for_byte(pacs_box, files)


def test_get_when_the_pacs_cannot_move_to_the_box(
    make_box: BoxFactory, box_port: int, orthanc: Orthanc, tmp_path: Path
) -> None:
    # The box's AE title is one Orthanc has no modality entry for: C-MOVE cannot reach it.
    box = make_box(
        dicom={"port": box_port, "ae_title": "AFRA_UNKNOWN"},
        pacs={"ae_title": orthanc.aet, "host": LOOPBACK, "port": orthanc.dicom_port},
    )
    assert box.pacs is not None
    study_uid, files = upload_study(orthanc, tmp_path / "GET")
    result = box.pacs.retrieve(study_uid)
    assert result.method == "C-GET" and result.ok, result
    # Orthanc 1.10 answers an unknown move destination with 0xC000 rather than 0xA801.
    assert any(note.startswith("C-MOVE answered 0x") for note in result.notes)
    assert_held_byte_for_byte(box, files)


def test_study_waits_for_what_the_pacs_holds(
    pacs_box: Appliance, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid, _files = upload_study(orthanc, tmp_path / "PART", n=4)
    for instance_id in orthanc.instances():
        tags = orthanc.instance_tags(instance_id)
        if tags.get("StudyInstanceUID") == study_uid and tags.get("InstanceNumber") in ("1", "2"):
            orthanc.store_to("AFRA", instance_id)
    pacs_box.clock.advance(61)  # type: ignore[attr-defined]
    assert pacs_box.completion.run_once() == []
    [study] = [s for s in pacs_box.index.studies() if s.study_uid == study_uid]
    assert study.expected_count == 4 and "waiting for 2" in study.state_reason
    orthanc.store_to("AFRA", orthanc_study_id(orthanc, study_uid))
    pacs_box.clock.advance(61)  # type: ignore[attr-defined]
    pacs_box.completion.run_once()  # the box's own completion thread may get there first
    # Complete now, so the uplink gives it its code (the box's own worker may get there first
    # too): then it is queued, whoever came first.
    pacs_box.uplink.issue_codes()
    [study] = [s for s in pacs_box.index.studies() if s.study_uid == study_uid]
    assert study.state == "queued" and study.instance_count == 4


def test_cli_echo_find_move(pacs_box: Appliance, orthanc: Orthanc, tmp_path: Path) -> None:
    study_uid, files = upload_study(orthanc, tmp_path / "CLI", n=3)
    cfg = tmp_path / "afra.toml"
    cfg.write_text(
        f'[box]\ndata_dir = "{tmp_path / "cli-data"}"\n'
        f'[dicom]\nae_title = "AFRA"\n'
        f'[pacs]\nae_title = "{orthanc.aet}"\nhost = "{LOOPBACK}"\nport = {orthanc.dicom_port}\n'
    )

    def afra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "afra.cli", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    echo = afra("echo")
    assert echo.returncode == 0 and "status 0x0000" in echo.stdout
    found = afra("find", "-k", "PatientID=CLI")
    assert found.returncode == 0 and study_uid in found.stdout and "1 match" in found.stdout
    moved = afra("move", study_uid)
    assert moved.returncode == 0, moved.stderr
    assert f"completed {len(files)}" in moved.stdout
    assert_held_byte_for_byte(pacs_box, files)
    bad = afra("move", "../etc")
    assert bad.returncode == 2 and "not a valid Study Instance UID" in bad.stderr


# pynetdicom leaves the refused socket to the garbage collector; that is its business.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_echo_to_absent_pacs_is_a_clear_error(pacs_box: Appliance, tmp_path: Path) -> None:
    from afra.config import PacsSettings

    client = PacsClient(PacsSettings(ae_title="NOPE", host=LOOPBACK, port=1), pacs_box.config.dicom)
    with pytest.raises(ConnectionError, match="did not accept an association"):
        client.echo()
