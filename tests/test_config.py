"""Configuration: defaults -> file -> environment -> command line, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from afra.config import load_config
from afra.errors import ConfigError

GOOD = """
[box]
data_dir = "/srv/afra"

[dicom]
ae_title = "AFRA_BOX"
port = 11112

[[dicom.peers]]
ae_title = "PACS"
host = "10.1.2.0/24"

[pacs]
ae_title = "PACS"
host = "10.1.2.3"
port = 104
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "afra.toml"
    path.write_text(text)
    return path


def test_file_values_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.dicom.ae_title == "AFRA_BOX"
    assert config.dicom.peers[0].host == "10.1.2.0/24"
    assert config.pacs is not None and config.pacs.port == 104
    assert config.study.stable_age == 60  # default kept
    assert config.dicom.allow_any_peer is False


def test_precedence_env_over_file_cli_over_env(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"AFRA__DICOM__PORT": "2000", "AFRA__STUDY__STABLE_AGE": "5"}
    config = load_config(path, environ=env, cli_overrides=["dicom.port=3000"])
    assert config.dicom.port == 3000
    assert config.study.stable_age == 5


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_config(environ={"AFRA_CONFIG": str(path)}).dicom.ae_title == "AFRA_BOX"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[dicom]\nport = 70000\n", "dicom.port", "less than or equal to 65535"),
        ("[dicom]\nprot = 104\n", "dicom.prot", "Extra inputs are not permitted"),
        ('[dicom]\nae_title = "A\\\\B"\n', "dicom.ae_title", "backslash"),
        ('[dicom]\nae_title = "ABCDEFGHIJKLMNOPQ"\n', "dicom.ae_title", "at most 16"),
        (
            '[[dicom.peers]]\nae_title = "X"\nhost = "pacs.local"\n',
            "dicom.peers.0.host",
            "hostnames are not accepted",
        ),
        ("[study]\nstable_age = -1\n", "study.stable_age", "greater than 0"),
        ('[pacs]\nhost = "10.0.0.1"\n', "pacs.ae_title", "Field required"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    message = str(err.value)
    assert f"  {key}: " in message
    assert problem in message
    assert str(tmp_path / "afra.toml") in message


def test_several_errors_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[dicom]\nport = -1\nmax_pdu = 1\n"), environ={})
    assert "dicom.port" in str(err.value) and "dicom.max_pdu" in str(err.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[dicom\nport=1"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_bad_environment_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD), environ={"AFRA__DICOM__PORT": "many"})
    assert "dicom.port" in str(err.value) and "environment" in str(err.value)


def test_cli_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[dicom]\nport = 70000\n")
    result = subprocess.run(
        [sys.executable, "-m", "afra.cli", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "dicom.port" in result.stderr
    assert "listening" not in result.stdout


def test_check_config_prints_effective_values(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "afra.cli",
            "--config",
            str(write(tmp_path, GOOD)),
            "--set",
            "dicom.port=4242",
            "check-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"port": 4242' in result.stdout
