"""A study's folder is durable in its parents before anything linked into it is acknowledged,
whoever made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from afra.dicom import spool as spool_module
from afra.dicom.spool import Spool


def _flushed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = spool_module.fsync_dir

    def record(path: Path) -> None:
        calls.append(Path(path))
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", record)
    return calls


def test_a_folder_another_process_just_made_is_flushed_into_its_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "data")
    study = spool.absolute(spool.instance_path("1.2.3", "1.2.3.4")).parent
    # Another receiving process (or the CLI's C-GET) made it a moment ago and may not have
    # flushed its parents yet: this spool flushes them itself before it relies on it.
    study.mkdir(parents=True)
    flushed = _flushed(monkeypatch)
    spool.ensure_dir(study)
    assert flushed == [study.parent.parent, study.parent]
    # Once known, never again.
    spool.ensure_dir(study)
    assert len(flushed) == 2


def test_a_new_root_is_made_with_its_folders(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new" / "data")
    assert spool.tmp_dir.is_dir() and (tmp_path / "new" / "data" / "objects").is_dir()
