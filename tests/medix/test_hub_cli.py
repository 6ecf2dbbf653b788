"""`medix-hub` prints where it is, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from medix.hub.app import HubConfig, create_hub
from medix.hub.cli import _admin_token


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    token_file = tmp_path / "token"
    command = [
        sys.executable,
        "-m",
        "medix.hub.cli",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        "--admin-token-file",
        str(token_file),
        "--pairing-code",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            lines = dict(process.stdout.readline().strip().split(": ", 1) for _ in range(4))
            assert lines["url"].startswith("https://127.0.0.1:")
            assert Path(lines["ca"]) == data_dir / "ca" / "ca.crt"
            assert Path(lines["admin token file"]) == token_file
            assert len(lines["pairing code"]) == 14
            token = token_file.read_text().strip()
            assert token_file.stat().st_mode & 0o777 == 0o600
            response = requests.get(
                lines["url"] + "/admin/nodes",
                headers={"Authorization": f"Bearer {token}"},
                verify=lines["ca"],
                timeout=10,
            )
            assert response.status_code == 200 and response.json() == {"nodes": []}
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0


def test_admin_token_file_is_made_once(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "token"
    first = _admin_token(path)
    assert first and _admin_token(path) == first
    assert _admin_token(None) is None


def test_an_empty_admin_token_file_stops_the_hub_instead_of_opening_it(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    (data / "admin-token").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        _admin_token(data / "admin-token")
    with pytest.raises(ValueError, match="empty"):
        create_hub(HubConfig(data_dir=data))  # the in-process hub refuses to start too
