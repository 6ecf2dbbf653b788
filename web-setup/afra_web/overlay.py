"""Settings the wizard changes: saved in `<data_dir>/settings.toml`, applied to the running box.

The file is an overlay that `afra.config.load_config` reads on top of the main configuration
(and below the environment and the command line), so a reboot starts with what the wizard
saved. A change is checked against the whole configuration before it is written: a box never
stops starting because of a wizard change. Applying is done live, on the running appliance:
the DICOM service is restarted on its new AE title and port, the PACS client replaced, and
after an enrolment the hub client attached so uploads start without a restart.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from afra.app import Appliance
from afra.config import OVERLAY_NAME, Config
from afra.uplink.client import HubClient
from afra_web.state import write_private

LOG = logging.getLogger("afra.web")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes (\" \\ \n \uXXXX) are all valid in a TOML basic string.
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, list | tuple) and all(not isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to the settings file")


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """The overlay's small TOML: sections of scalars, lists, and lists of tables."""
    lines = ["# Saved by the setup wizard. Read on top of the main configuration at start.", ""]
    for name, section in data.items():
        lines.append(f"[{name}]")
        tables = {
            k: v
            for k, v in section.items()
            if isinstance(v, list) and v and all(isinstance(t, dict) for t in v)
        }
        for key, value in section.items():
            if key not in tables:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for key, rows in tables.items():
            for row in rows:
                lines.append(f"[[{name}.{key}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in row.items())
                lines.append("")
    return "\n".join(lines)


class SettingsOverlay:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / OVERLAY_NAME

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            return tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    @staticmethod
    def merged(current: Config, changes: dict[str, dict[str, Any] | None]) -> Config:
        """The effective configuration with `changes` (a section set to None is removed);
        ValidationError if the result would not be a valid configuration."""
        effective = current.model_dump(mode="json")
        for section, values in changes.items():
            if values is None:
                effective[section] = None
            else:
                effective[section] = {**(effective.get(section) or {}), **values}
        return Config.model_validate(effective)

    def write(self, changes: dict[str, dict[str, Any] | None]) -> None:
        """Merge `changes` into the saved overlay (after `merged` accepted them)."""
        overlay = self.read()
        for section, values in changes.items():
            if values is None:
                overlay.pop(section, None)
            else:
                overlay[section] = {**overlay.get(section, {}), **values}
        text = to_toml(overlay)
        tomllib.loads(text)  # what is written must read back
        write_private(self.path, text.encode("utf-8"))


def attach_hub(appliance: Appliance) -> None:
    """After an enrolment: talk to the (new) hub from now on, without a restart."""
    appliance.attach_hub(
        HubClient(appliance.identity, timeout=appliance.config.hub.request_timeout)
    )


def overlay_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )
