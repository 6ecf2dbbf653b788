"""The saved settings overlay, `afra setup-code`, and where `afra run` says the page is."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from afra.cli import main
from afra.config import Config, load_config
from afra.errors import ConfigError
from afra_web.overlay import SettingsOverlay, to_toml
from afra_web.server import urls
from afra_web.state import WebState
from tests.fakes import FakeClock


def data_dir_override(path: Path) -> list[str]:
    return [f'box.data_dir="{path}"']


def test_the_overlay_sits_between_the_file_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[dicom]\nae_title = "FROM_WIZARD"\nport = 104\n')
    base = tmp_path / "afra.toml"
    base.write_text('[dicom]\nae_title = "FROM_FILE"\nport = 11112\nmax_associations = 4\n')
    config = load_config(base, environ={}, cli_overrides=data_dir_override(tmp_path))
    assert (config.dicom.ae_title, config.dicom.port) == ("FROM_WIZARD", 104)
    assert config.dicom.max_associations == 4  # untouched keys come from the file
    env = {"AFRA__DICOM__PORT": "2104"}
    assert (
        load_config(base, environ=env, cli_overrides=data_dir_override(tmp_path)).dicom.port == 2104
    )


def test_a_broken_overlay_is_named(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[dicom\n")
    with pytest.raises(ConfigError, match=r"settings\.toml cannot be read"):
        load_config(None, environ={}, cli_overrides=data_dir_override(tmp_path))
    (tmp_path / "settings.toml").write_text('[box]\ndata_dir = "/elsewhere"\n')
    with pytest.raises(ConfigError, match=r"cannot move box\.data_dir"):
        load_config(None, environ={}, cli_overrides=data_dir_override(tmp_path))


def test_the_overlay_refuses_what_would_stop_the_box_starting(tmp_path: Path) -> None:
    from pydantic import ValidationError

    overlay = SettingsOverlay(tmp_path)
    with pytest.raises(ValidationError):
        overlay.merged(Config(), {"dicom": {"port": 99999}})
    assert not overlay.path.exists()


def test_the_overlay_writes_toml_that_reads_back() -> None:
    data = {
        "dicom": {
            "ae_title": 'A"B\\C',
            "port": 104,
            "allow_any_peer": False,
            "peers": [{"ae_title": "CT1", "host": "10.0.0.20"}],
        },
        "pacs": {"ae_title": "ORTHANC", "host": "پکس.local", "port": 4242},
    }
    assert tomllib.loads(to_toml(data)) == data


def test_setup_code_for_the_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set", f'box.data_dir="{tmp_path}"', "setup-code"]
    assert main(args) == 0
    code = capsys.readouterr().out.strip()
    assert len(code) == 14 and code.count("-") == 2
    stored = (tmp_path / "web" / "setup-code.hash").read_text()
    assert code.replace("-", "") not in stored
    assert WebState(tmp_path, FakeClock()).check_setup_code(code)
    assert main(args) == 2  # a box keeps the code on its label
    assert "already holds a setup code" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    new = capsys.readouterr().out.strip()
    assert new != code and not WebState(tmp_path, FakeClock()).check_setup_code(code)


def test_where_to_open_the_page() -> None:
    assert urls("127.0.0.1", 8080) == ["http://127.0.0.1:8080/"]
    import socket

    assert urls("0.0.0.0", 80) == [f"http://{socket.gethostname()}.local/"]
    assert urls("10.0.0.7", 80)[-1] == "http://10.0.0.7/"


def test_make_run_prints_where_to_open_the_wizard_and_the_setup_code(tmp_path: Path) -> None:
    """`afra emulate` (what `make run` runs): the page's address and a code that claims."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import requests

    root = Path(__file__).resolve().parents[2]
    command = [
        str(Path(sys.executable).parent / "afra"),
        "--config",
        str(root / "etc" / "emulation.toml"),
        "--set",
        f'box.data_dir="{tmp_path}"',
        "--set",
        "dicom.port=0",
        "--set",
        "hub.command_poll_s=1",  # stopping waits for the hub's long poll to return
        "emulate",
        "--hub-port",
        "0",
    ]
    env = {**os.environ, "AFRA__WEB__PORT": "0"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Setup wizard and dashboard: open "):
                break
        out = "".join(lines)
        code = re.search(r"Setup code \(the label of a real box\): (\S+);", out)
        url = re.search(r"Setup wizard and dashboard: open (http://127\.0\.0\.1:\d+/)", out)
        assert code and url, out
        with requests.Session() as browser:
            browser.trust_env = False
            page = browser.get(url.group(1) + "claim", timeout=10).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert token is not None
            answer = browser.post(
                url.group(1) + "claim",
                data={"name": "Dev", "code": code.group(1), "csrf_token": token.group(1)},
                allow_redirects=False,
                timeout=10,
            )
            assert answer.status_code == 302
            assert answer.headers["Location"].endswith("/setup/password")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
