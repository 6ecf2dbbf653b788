"""The status file, `<data_dir>/status.json`, from the reading side.

The running box keeps it (`afra.health.monitor.HealthMonitor`): its health snapshot, the
panel's and mDNS's parts, when it was written and by which process. Other processes read it
here: `afra status` and the virtual panel, the update self-test. This module owns the file's
name, how often the box refreshes it, and when a reader may take it as a running box's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afra import datadir
from afra.datadir import DataDir

STATUS_FILE = datadir.STATUS
STATUS_REFRESH_S = 30.0  # the file is rewritten at least this often while the box runs


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running box's last status document, or None when there is none."""
    try:
        data = json.loads(DataDir(data_dir).status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def box_running(status: Mapping[str, Any], now: float) -> bool:
    """Whether the process that wrote `status` still runs and keeps it fresh."""
    pid = status.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
    updated = status.get("updated_at")
    return isinstance(updated, int | float) and now - updated < 3 * STATUS_REFRESH_S
