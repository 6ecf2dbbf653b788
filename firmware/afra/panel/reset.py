"""Factory reset: what the button's long hold erases, and nothing else.

Configuration and credentials go: the node's identity (key, certificate, pinned hub CA,
enrolment), the wizard's state (`web/`: admin password and progress), the wizard's settings
overlay (`settings.toml`) and the policy received from the old hub (`policy.json`). The spool,
the index and every study not yet delivered stay: the list below is the whole list, and a
test checks that received studies survive. The label's setup code (`web/setup-code.hash`,
written when the image was made) stays too: it is printed on the box, and after a reset it is
how the box is claimed again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from afra.datadir import RESET_ENTRIES, RESET_KEEPS
from medix.durable import fsync_dir

LOG = logging.getLogger("afra.panel")

KEPT = RESET_KEEPS  # inside a reset entry, what stays (afra/datadir.py names both)


def factory_reset(data_dir: Path) -> list[str]:
    """Remove the reset entries under `data_dir`; returns the names that were there."""
    removed: list[str] = []
    for name in RESET_ENTRIES:
        path = data_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir() and name in KEPT:
            for child in path.iterdir():
                if child.name in KEPT[name]:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            fsync_dir(path)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    if removed:
        fsync_dir(data_dir)
    LOG.warning(
        "factory reset: removed %s from %s; studies not yet delivered are kept",
        ", ".join(removed) or "nothing (already clean)",
        data_dir,
    )
    return removed
