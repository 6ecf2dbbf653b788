"""The first five minutes at the command line: `afra` from any directory, a table for people,
the slip as the dashboard prints it, and `make run` with a port already taken."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from afra.app import Appliance
from tests.conftest import LOOPBACK, BoxFactory, wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.peers import free_port, storescu

AFRA = [sys.executable, "-m", "afra.cli"]


def afra(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AFRA, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _box_with_a_coded_study(
    make_box: BoxFactory, clock: FakeClock, folder: Path, tmp_path: Path
) -> Appliance:
    box = make_box(folder / "data")
    files = make_ct_series(
        tmp_path / "study", n=2, rows=16, cols=16, patient_id="CLI1", patient_name="Rahimi^Sara"
    )
    storescu(LOOPBACK, box.dicom.port, files)
    clock.advance(61)  # past the stable age
    wait_for(
        lambda: box.uplink.issue_codes() or any(s.medis_code for s in box.index.studies()),
        what="a Medis code for the study",
    )
    return box


def _config_file(folder: Path) -> Path:
    # data_dir relative: read from the file's folder, wherever afra is started.
    path = folder / "afra.toml"
    path.write_text(
        '[box]\ndata_dir = "data"\n[hub]\npatient_url = "https://hub.example/patient"\n'
        "[mdns]\nenabled = false\n",
        encoding="utf-8",
    )
    return path


def test_studies_from_any_directory_reads_like_a_table(
    make_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    folder = tmp_path / "site"
    box = _box_with_a_coded_study(make_box, clock, folder, tmp_path)
    (code,) = [s.medis_code for s in box.index.studies() if s.medis_code]
    config = _config_file(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    shown = afra("--config", str(config), "studies", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    header, row, *rest = shown.stdout.splitlines()
    assert header.split() == ["RECEIVED", "PATIENT", "STUDY", "DATE", "IMAGES", "STATE", "CODE"]
    assert "Sara Rahimi" in row and "queued" in row  # as people write a name; its state
    assert str(code) not in shown.stdout and str(code)[-4:] in row  # masked: the last group
    assert "••••-••••-" in row
    assert rest[-1].startswith("1 study")

    scripted = afra("--config", str(config), "studies", "--json", cwd=elsewhere)
    (entry,) = json.loads(scripted.stdout)
    assert entry["medis_code"] == code and entry["patient_name"] == "Rahimi^Sara"


def test_no_data_is_a_sentence_not_a_traceback(tmp_path: Path) -> None:
    config = _config_file(tmp_path)
    shown = afra("--config", str(config), "studies", cwd=Path("/"))
    assert shown.returncode == 2
    assert "Traceback" not in shown.stderr
    assert shown.stderr.startswith(f"afra: no box data in {tmp_path / 'data'} (box.data_dir)")


def test_the_cli_slip_carries_the_study_description(
    make_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    folder = tmp_path / "site"
    box = _box_with_a_coded_study(make_box, clock, folder, tmp_path)
    (study,) = box.index.studies()
    shown = afra("--config", str(_config_file(folder)), "slip", study.study_uid, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "AFRA synthetic study" in shown.stdout  # the description, as the web slip has it


def test_make_run_with_the_web_port_taken_says_which_and_how(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        shown = afra(
            "--config",
            str(Path(__file__).resolve().parent.parent / "etc" / "emulation.toml"),
            "--set",
            f'box.data_dir="{tmp_path / "data"}"',
            "--set",
            f"web.port={port}",
            "--set",
            "dicom.port=0",
            "--set",
            "mdns.enabled=false",
            "emulate",
            "--hub-port",
            str(free_port()),
            cwd=tmp_path,
        )
    finally:
        taken.close()
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert "Traceback" not in shown.stderr
    (line,) = [ln for ln in shown.stderr.splitlines() if ln.startswith("afra:")]
    assert f"127.0.0.1:{port}" in line and "make run WEB_PORT=<port>" in line
    assert f":{port}/" not in shown.stdout  # no address printed that leads to something else
